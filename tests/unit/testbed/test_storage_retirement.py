"""The pod runner's storage retirement: one replica of a StatefulSet down at a time, as the
kubelet's readiness probe keeps it on a cluster (KWOK reports pods Ready at once)."""

from __future__ import annotations

import pytest

from testbed.podrunner import READY_WAIT, retirements

S = "s-dc-a-0"  # a StatefulSet of three: s-dc-a-0-0, -1, -2


def pods(*ordinals: int) -> set[str]:
    return {f"{S}-{n}" for n in ordinals}


@pytest.mark.parametrize(
    ("story", "retiring", "running", "ready", "now", "stopped"),
    [
        (
            "one replaced, the others ready: stopped at once",
            {f"{S}-2": (S, 0.0)},
            pods(0, 1, 2),
            pods(0, 1),
            1.0,
            [f"{S}-2"],
        ),
        (
            "one replaced while another is not ready yet: it keeps serving",
            {f"{S}-2": (S, 0.0)},
            pods(0, 1, 2),
            pods(0),
            1.0,
            [],
        ),
        (
            "... at most READY_WAIT",
            {f"{S}-2": (S, 0.0)},
            pods(0, 1, 2),
            pods(0),
            READY_WAIT,
            [f"{S}-2"],
        ),
        (
            "two replaced in one pass, the earlier already recreated: it alone goes",
            {f"{S}-2": (S, 0.0), f"{S}-1": (S, 0.5)},
            pods(0, 2),
            pods(0),
            1.0,
            [f"{S}-2"],
        ),
        (
            "two replaced, the later recreated first: the recreated one goes, the other waits for it",
            {f"{S}-2": (S, 0.0), f"{S}-1": (S, 0.5)},
            pods(0, 1),
            pods(0),
            1.0,
            [f"{S}-1"],
        ),
        (
            "two deleted and not recreated (a scale down): no replacement to wait for, both go",
            {f"{S}-2": (S, 0.0), f"{S}-1": (S, 0.5)},
            pods(0),
            pods(0),
            1.0,
            [f"{S}-2", f"{S}-1"],
        ),
        (
            "the whole StatefulSet deleted (scale down, ImageServer gone): every process goes",
            {f"{S}-0": (S, 0.0), f"{S}-1": (S, 0.0), f"{S}-2": (S, 0.0)},
            set(),
            set(),
            0.1,
            [f"{S}-0", f"{S}-1", f"{S}-2"],
        ),
        (
            "another StatefulSet's pods do not hold it back",
            {f"{S}-2": (S, 0.0)},
            pods(0, 1, 2) | {"s-dc-b-0-0"},
            pods(0, 1),
            1.0,
            [f"{S}-2"],
        ),
    ],
)
def test_a_replaced_storage_process_stops_only_once_the_rest_of_its_set_is_served(
    story: str,
    retiring: dict[str, tuple[str, float]],
    running: set[str],
    ready: set[str],
    now: float,
    stopped: list[str],
) -> None:
    assert retirements(retiring, running, ready, now) == stopped, story
