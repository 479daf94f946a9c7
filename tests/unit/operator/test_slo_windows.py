"""One table of windows and factors (slo.py) for the rules, the evaluation and the policy,
and what each window covers for budget windows other than the table's 30 days."""

from __future__ import annotations

import datetime

from hypothesis import given
from hypothesis import strategies as st

from imageserver_operator.api import durations
from imageserver_operator.core import evaluation, policy, slo


def test_thirty_days_is_the_workbook_table_itself() -> None:
    assert slo.ranges("30d") == {w: w for w in slo.WINDOWS}


def test_other_budget_windows_keep_each_windows_share() -> None:
    assert slo.ranges("3d") == {
        "5m": "30s",
        "30m": "3m",
        "1h": "6m",
        "2h": "12m",
        "6h": "36m",
        "1d": "144m",
        "3d": "432m",
    }
    assert slo.ranges("1d")["5m"] == "30s"  # 10 s would be under two scrapes: the floor
    assert slo.ranges("90d")["1h"] == "3h"


@given(st.integers(1, 90))
def test_ranges_keep_the_tables_order_and_never_fall_under_the_floor(days: int) -> None:
    spans = [durations.parse(r) for r in slo.ranges(f"{days}d").values()]
    assert spans == sorted(spans)
    assert min(spans) >= slo.MIN_RANGE
    assert spans[-1] <= datetime.timedelta(days=days)


def test_the_policy_and_the_evaluation_read_the_same_table() -> None:
    assert policy.PAGE_FAST == 14.4
    fast = {"1h": 14.5, "5m": 14.5}
    assert policy.page_level(fast) and slo.over(fast, "page")
    assert not policy.page_level({"1h": 14.5, "5m": 14.3})
    assert policy.page_level({"6h": 6.1, "30m": 6.1})
    assert policy.ticket_level({"1d": 3.1, "2h": 3.1}) and policy.ticket_level({"3d": 1.1, "6h": 1.1})
    for window in slo.WINDOWS:
        assert evaluation.NAME.fullmatch(f"imageserver:availability_error_ratio:rate{window}")
        assert f"rate({'|'.join(slo.WINDOWS)})" in evaluation.RATIO_QUERY
