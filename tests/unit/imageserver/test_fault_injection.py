"""Game-day faults fail the share of requests they are set to: a ratio asked for is the ratio
seen, within 3 over any run of requests, reproducibly, and in no fixed period a client's
request pattern could line up with."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from imageserver.faults import Faults


@given(
    ratio=st.floats(min_value=0.0, max_value=1.0),
    skip=st.integers(min_value=0, max_value=500),
    n=st.integers(min_value=1, max_value=500),
)
def test_any_run_of_requests_fails_the_ratio_within_three(ratio: float, skip: int, n: int) -> None:
    faults = Faults(error_ratio=ratio)
    for _ in range(skip):
        faults.should_fail()
    failed = sum(faults.should_fail() for _ in range(n))
    assert abs(failed - n * ratio) < 3


def test_the_edges_fail_never_and_always() -> None:
    never, always = Faults(error_ratio=0.0), Faults(error_ratio=1.0)
    assert not any(never.should_fail() for _ in range(1000))
    assert all(always.should_fail() for _ in range(1000))


def test_half_is_not_every_other_request() -> None:
    """An upload writes three blobs in a row: with strict alternation at 0.5 every upload
    failed; some must get through, as they would with independent failures (1 in 8)."""
    faults = Faults(error_ratio=0.5)
    uploads = [[faults.should_fail("blob_put") for _ in range(3)] for _ in range(400)]
    through = sum(not any(writes) for writes in uploads)
    assert 0.03 < through / 400 < 0.3


def test_the_same_route_fails_the_same_requests_in_every_run() -> None:
    one, two = Faults(error_ratio=0.3), Faults(error_ratio=0.3)
    assert [one.should_fail("upload") for _ in range(200)] == [two.should_fail("upload") for _ in range(200)]


def test_each_route_fails_its_own_share_whatever_the_interleaving() -> None:
    """A client alternating uploads and reads at ratio 0.5 sees half of each fail, not every
    upload and no read."""
    faults = Faults(error_ratio=0.5)
    failed = {"upload": 0, "variant": 0}
    for _ in range(100):
        for route in failed:
            failed[route] += faults.should_fail(route)
    assert all(abs(count - 50) < 3 for count in failed.values()), failed
