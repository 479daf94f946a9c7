"""The Rebalancing condition: from what the storage nodes report to Prometheus, said in
status (with the count) and in an Event when it starts and when it ends, not at every count."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from imageserver_operator.api.models import ImageServerSpec
from imageserver_operator.core import evaluation
from imageserver_operator.core.engine import Subject
from imageserver_operator.core.engine import rebalancing as judged
from imageserver_operator.core.evaluation import Budgets
from imageserver_operator.core.policy import Observation
from imageserver_operator.core.status import Observation as Seen
from imageserver_operator.core.status import compute

NOW = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=datetime.UTC)
SPEC = ImageServerSpec.model_validate({"version": "1.0.0", "datacenters": [{"name": "dc-a"}]})


def case(remaining: float | None, conditions: list[dict[str, Any]]) -> tuple[Subject, Observation]:
    subject = Subject("prod", "photos", 3, SPEC, {}, {"conditions": conditions})
    return subject, Observation(True, rebalance_remaining=remaining)


def rebalancing(status: str, message: str = "", since: str = "2026-11-27T11:00:00Z") -> dict[str, Any]:
    return {"type": "Rebalancing", "status": status, "message": message, "lastTransitionTime": since}


@pytest.mark.parametrize(
    ("remaining", "before", "status", "event"),
    [
        (None, [], None, False),  # not reported: nothing said
        (0, [], None, False),  # never rebalanced: nothing to say
        (40, [], "True", True),  # starts: an Event
        (40, [rebalancing("False")], "True", True),
        (
            30,
            [
                rebalancing(
                    "True", "40 images (counted per replica) are moving to the shards that now own them"
                )
            ],
            "True",
            False,
        ),
        (
            40,
            [
                rebalancing(
                    "True", "40 images (counted per replica) are moving to the shards that now own them"
                )
            ],
            None,
            False,
        ),
        (0, [rebalancing("True", "3 images …")], "False", True),  # done: an Event
        (0, [rebalancing("False")], None, False),
        (None, [rebalancing("True")], None, False),  # Prometheus lost the series: keep what was said
    ],
)
def test_the_condition_says_when_rebalancing_starts_progresses_and_ends(
    remaining: float | None, before: list[dict[str, Any]], status: str | None, event: bool
) -> None:
    condition, started_or_ended = judged(*case(remaining, before), NOW)
    assert (condition["status"] if condition else None) == status
    assert started_or_ended is event
    if condition is not None and status == "True":
        assert f"{remaining:.0f} images" in condition["message"]
        # Progress keeps the time it started.
        expected = (
            "2026-11-27T11:00:00Z" if before and before[0]["status"] == "True" else "2026-11-27T12:00:00Z"
        )
        assert condition["lastTransitionTime"] == expected


def test_the_storage_nodes_report_comes_in_the_traffic_answer() -> None:
    assert "imageserver_rebalance_remaining" in evaluation.TRAFFIC_QUERY
    traffic = [
        {
            "metric": {"namespace": "prod", "imageserver": "photos", "kind": "rebalance_remaining"},
            "value": [0, "12"],
        },
        {"metric": {"namespace": "prod", "imageserver": "photos", "kind": "requests"}, "value": [0, "5"]},
    ]
    budgets = {("prod", "photos"): Budgets(0.001, 0.01), ("prod", "other"): Budgets(0.001, 0.01)}
    seen = evaluation.observations([], traffic, budgets)
    assert seen[("prod", "photos")].rebalance_remaining == 12
    assert seen[("prod", "other")].rebalance_remaining is None


def test_the_reconcile_loop_leaves_what_the_slo_loop_owns_alone() -> None:
    """Each loop applies only its own fields (server-side apply, one field manager each)."""
    old = {"conditions": [rebalancing("True", "3 images")], "rebalanceRemaining": 3}
    new = compute(
        Seen(generation=3, spec=SPEC, children={}, drained=frozenset(), paused=False, problems=()), old, "t"
    )
    assert "rebalanceRemaining" not in new and "errorBudgetRemaining" not in new
    assert {c["type"] for c in new["conditions"]} == {"Ready", "Progressing", "Degraded", "AutomationPaused"}
