"""Game-day faults fail the share of requests they are set to, evenly: a ratio asked for is
the ratio seen, over any run of requests, with no dice involved."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from imageserver.faults import Faults


@given(
    ratio=st.floats(min_value=0.0, max_value=1.0),
    skip=st.integers(min_value=0, max_value=500),
    n=st.integers(min_value=1, max_value=500),
)
def test_any_run_of_requests_fails_the_ratio_rounded_down_or_up(ratio: float, skip: int, n: int) -> None:
    faults = Faults(error_ratio=ratio)
    for _ in range(skip):
        faults.should_fail()
    failed = sum(faults.should_fail() for _ in range(n))
    assert math.floor(n * ratio - 1e-6) <= failed <= math.ceil(n * ratio + 1e-6)


def test_the_edges_fail_never_and_always() -> None:
    never, always = Faults(error_ratio=0.0), Faults(error_ratio=1.0)
    assert not any(never.should_fail() for _ in range(1000))
    assert all(always.should_fail() for _ in range(1000))


def test_half_alternates() -> None:
    faults = Faults(error_ratio=0.5)
    assert [faults.should_fail() for _ in range(6)] == [False, True] * 3


def test_each_route_fails_its_own_share_whatever_the_interleaving() -> None:
    """A client alternating uploads and reads at ratio 0.5 sees half of each fail, not every
    upload and no read."""
    faults = Faults(error_ratio=0.5)
    failed = {"upload": 0, "variant": 0}
    for _ in range(100):
        for route in failed:
            failed[route] += faults.should_fail(route)
    assert failed == {"upload": 50, "variant": 50}
