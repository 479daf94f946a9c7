"""An incident's cost, summed from Prometheus' 5m rates cycle by cycle."""

from __future__ import annotations

import datetime

import pytest

from imageserver_operator.api.models import Tally
from imageserver_operator.core.incidents import add, impact
from imageserver_operator.core.policy import Observation

MONTH = datetime.timedelta(days=30)


def rates(requests: float, errors: float) -> Observation:
    return Observation(True, requests, errors_per_second=errors)


def test_a_long_incident_is_the_sum_of_its_rates() -> None:
    tally = Tally()
    for _ in range(40):  # 10 minutes at 15 s cycles, 2 of 20 requests per second failing
        tally = add(tally, rates(20, 2), 15, "")
    spent = impact(tally, 0.001, MONTH)
    assert spent.failed_requests_estimate == 1200
    # 1200 failures against 0.1 % of 20/s over 30 days (51,840 requests of budget).
    assert spent.error_budget_consumed_percent == pytest.approx(2.31, abs=0.01)


def test_a_burst_shorter_than_the_rate_window_is_counted_whole() -> None:
    """30 s of 10 failures/s shows as at most 300/300 s = 1/s in a 5m rate: summing that rate
    over the 30 s would say 30; the worst 5 minutes says 300."""
    tally = Tally()
    for errors in (0.3, 0.6, 1.0, 1.0):  # the 5m rate climbing as the burst enters the window
        tally = add(tally, rates(20, errors), 10, "")
    assert impact(tally, 0.001, MONTH).failed_requests_estimate == 300


def test_no_traffic_spends_no_budget() -> None:
    spent = impact(Tally(), 0.001, MONTH)
    assert (spent.failed_requests_estimate, spent.error_budget_consumed_percent) == (0, 0.0)
