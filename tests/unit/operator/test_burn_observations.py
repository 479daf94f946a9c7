"""From Prometheus answers to the policy's observations."""

from __future__ import annotations

from typing import Any

import pytest

from imageserver_operator.core.evaluation import TRAFFIC_QUERY, Budgets, observations

KEY = ("prod", "photos")


def sample(name: str, value: str, **labels: str) -> dict[str, Any]:
    return {
        "metric": {"__name__": name, "namespace": "prod", "imageserver": "photos", **labels},
        "value": [0, value],
    }


def test_ratios_become_burn_rates_per_scope_and_the_worse_sli_decides() -> None:
    ratios = [
        sample("imageserver:availability_error_ratio:rate5m", "0.002"),
        sample("imageserver:latency_error_ratio:rate5m", "0.05"),  # 5x its 1 % budget
        sample("imageserver:availability_error_ratio_by_datacenter:rate1h", "0.0144", datacenter="dc-b"),
        sample("imageserver:availability_error_ratio_by_revision:rate30m", "NaN", revision="1.1.0"),
        sample("imageserver:availability_error_ratio:rate5m", "1", imageserver="someone-else"),
        sample("not_ours", "1"),
        sample("imageserver:availability_error_ratio:slo_window", "0.0002"),  # a fifth of the budget
        sample(
            "imageserver:availability_error_ratio_by_datacenter_revision:rate5m",
            "0.0005",
            datacenter="dc-a",
            revision="1.0.0",
        ),
    ]
    traffic = [
        {"metric": {"namespace": "prod", "imageserver": "photos", "kind": "requests"}, "value": [0, "12.5"]},
        {"metric": {"namespace": "prod", "imageserver": "photos", "kind": "errors"}, "value": [0, "0.5"]},
    ]
    seen = observations(ratios, traffic, {KEY: Budgets(0.001, 0.01)})[KEY]
    assert seen.reachable and seen.requests_per_second == 12.5 and seen.errors_per_second == 0.5
    assert seen.budget_spent == pytest.approx(0.2)
    assert seen.by_datacenter_revision == {"dc-a/1.0.0": {"5m": pytest.approx(0.5)}}
    assert seen.service == {"5m": 5.0}  # latency's 5x beats availability's 2x
    assert seen.by_datacenter == {"dc-b": {"1h": pytest.approx(14.4)}}
    assert seen.by_revision == {}  # NaN (no requests) is no data


def test_imageservers_without_series_get_no_data() -> None:
    seen = observations([], [], {KEY: Budgets(0.001, 0.01)})[KEY]
    assert seen.reachable and seen.service == {} and seen.requests_per_second == 0.0


def test_the_frontends_heard_per_datacenter_come_in_the_traffic_answer() -> None:
    assert "imageserver:frontends:count" in TRAFFIC_QUERY
    traffic = [
        {
            "metric": {
                "namespace": "prod",
                "imageserver": "photos",
                "kind": "frontends",
                "datacenter": "dc-a",
            },
            "value": [0, "2"],
        },
        {"metric": {"namespace": "prod", "imageserver": "photos", "kind": "requests"}, "value": [0, "5"]},
    ]
    budgets = {("prod", "photos"): Budgets(0.001, 0.01), ("prod", "older"): Budgets(0.001, 0.01)}
    seen = observations([], traffic, budgets)
    assert seen[("prod", "photos")].frontends_by_datacenter == {"dc-a": 2}
    assert seen[("prod", "photos")].requests_per_second == 5
    assert seen[("prod", "older")].frontends_by_datacenter is None  # not reported: judged by ratios
