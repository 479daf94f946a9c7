"""Acceptance: what must *not* make the operator act.

- Noise: the whole service burning at half its budget is no incident, with every page window
  filled with it. The ImageServer's SLO window is 3 days, so each burn window covers a tenth
  of its 30-day range ("5m" is 30 s, "30m" 3 minutes): three minutes of noise here are the
  half hour of a 30-day SLO (slo.py's rules and the policy's tests cover the real windows).
- Prometheus stopped: no data, so no action (even on a bad rollout), the SLOHealthy=Unknown
  condition and one notification; once Prometheus answers again the operator acts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from testbed.mission import Mission

SPEC: dict[str, Any] = {
    "version": "1.0.0",
    "datacenters": [{"name": "dc-a", "frontendReplicas": 1}, {"name": "dc-b", "frontendReplicas": 1}],
    "storage": {"replicas": 1, "writeQuorum": 1},
    "notifications": {"slack": {"channel": "#oncall", "tokenSecretRef": {"name": "slack"}}},
}


def untouched(one: Mission) -> bool:
    annotations = one.annotations()
    return (
        "imageserver.dev/last-action" not in annotations
        and "imageserver.dev/incident" not in annotations
        and one.rollout().get("phase") != "Aborted"
        and min(one.weights().values()) > 0
    )


def slo_condition(one: Mission) -> dict[str, Any]:
    conditions = one.imageserver().get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == "SLOHealthy"), {})


def test_half_the_budget_burning_over_every_page_window_is_not_an_incident(
    mission: Callable[..., Mission],
) -> None:
    # A 99 % objective and 0.5 % of requests failing: a steady 0.5x burn, everywhere.
    one = mission({**SPEC, "slo": {"availability": {"objective": 99.0}, "window": "3d"}})
    for dc in one.datacenters():
        one.runner.sicken(dc, 0.005)
    one.holds("no action on a 0.5x burn", lambda: untouched(one), 180, poll=5)

    assert one.prometheus is not None
    # "30m" (3 minutes here) holds some 3,600 requests: about 18 failures, never near 0 or 3x that.
    ratio = one.prometheus.query(
        f'imageserver:availability_error_ratio:rate30m{{namespace="{one.namespace}"}}'
    )
    burn = float(ratio[0]["value"][1]) / 0.01
    print(f"noise: burn {burn:.2f}x over 30m (3 minutes of a 3-day SLO), no action")
    assert 0.1 < burn < 1.5, "the noise was not there: the test proves nothing"
    assert slo_condition(one)["status"] == "True"
    assert one.postmortems() == [] and one.messages() == []


def test_with_prometheus_stopped_nothing_is_done_and_it_is_said_once(mission: Callable[..., Mission]) -> None:
    one = mission(SPEC, faults={"1.1.0": 0.5})
    one.until("the SLO is judged healthy", lambda: slo_condition(one).get("status") == "True", 60)
    assert one.prometheus is not None
    one.prometheus.stop()

    one.apply(version="1.1.0")  # a bad rollout nobody can see
    one.until("SLOHealthy=Unknown", lambda: slo_condition(one).get("status") == "Unknown", 30)
    assert slo_condition(one)["reason"] == "CannotJudge"
    assert "Prometheus is unreachable" in slo_condition(one)["message"]
    one.holds(
        "no action without data",
        lambda: "imageserver.dev/last-action" not in one.annotations(),
        90,
    )
    assert one.rollout().get("phase") != "Aborted"
    assert len(events := one.events_of("SLOUnknown")) == 1, events
    told = one.messages("SLO cannot be judged")
    # Said once, and nothing else beside the rollout's start (its wave waits for data).
    assert len(told) == 1 and [m["text"] for m in one.messages() if m not in told] == [
        f"{one.namespace}/{one.name}: rolling out 1.1.0: wave 1 (dc-a) takes it, judged against 1.0.0"
    ]
    assert "Prometheus is unreachable" in json.dumps(told[0]["blocks"])

    one.prometheus.start()  # the same port and data: the operator sees again, and acts
    one.until("rolled back once Prometheus answers", lambda: one.rolled_back("1.0.0"), 120)
