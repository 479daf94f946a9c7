"""Acceptance: a datacenter whose frontends fail is drained within two minutes, even while
Slack answers 429 and 500; the others serve every acknowledged image; once it recovers
(shown by the prober's trickle) it is undrained.

All real: API server, operator, imageserver processes in three datacenters, Prometheus, the
Slack stub, and the Gateway following the HTTPRoute's weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from testbed.mission import Mission

SPEC: dict[str, Any] = {
    "version": "1.0.0",
    "datacenters": [
        {"name": "dc-a", "frontendReplicas": 1},
        {"name": "dc-b", "frontendReplicas": 1},
        {"name": "dc-c", "frontendReplicas": 1},
    ],
    "storage": {"replicas": 1, "writeQuorum": 1},
    # Short enough for a test; the defaults (10m, 10m) are what production wants.
    "remediation": {"cooldown": "1m", "drain": {"healthyPeriod": "1m"}},
    # Burn windows a tenth of the 30-day table's ("5m" is 30 s): a recovery shows in 30 s.
    "slo": {"window": "3d"},
    "notifications": {"slack": {"channel": "#oncall", "tokenSecretRef": {"name": "slack"}}},
}


def test_a_sick_datacenter_is_drained_then_undrained_after_it_recovers(
    mission: Callable[..., Mission],
) -> None:
    one = mission(SPEC)
    gateway = one.gateway
    assert gateway is not None
    one.holds("all datacenters serve", lambda: min(one.weights().values()) > 0, 10)

    # Slack rate-limits, then fails, right as the incident starts.
    one.stub.fail(429, count=2, retry_after=3)
    one.stub.fail(500, count=3)
    one.runner.sicken("dc-b", 1.0)
    errors = one.until("dc-b serves errors", lambda: one.errors_seen('datacenter="dc-b"'), 60, 0.5)
    detected = one.until(
        "an incident is opened", lambda: "imageserver.dev/incident" in one.annotations(), 120, 0.5
    )
    drained = detected + one.until("dc-b drained", lambda: one.weights()["dc-b"] == 0, 120 - detected, 0.5)
    print(f"sick datacenter: errors {errors:.0f}s after the fault; TTD {detected:.0f}s, TTM {drained:.0f}s")
    assert drained <= 120
    assert one.weights() == {"dc-a": 100, "dc-b": 0, "dc-c": 100}
    topology = one.cluster.kubectl(
        "get", "cm", "shop-topology", "-n", one.namespace, "-o", "jsonpath={.data.topology\\.json}"
    )
    assert '"drained": true' in topology

    # Slack was refusing: the messages arrive later, in order, none lost.
    one.until("the drain is told in Slack", lambda: bool(one.messages("Drained dc-b")), 60)
    refused = [c.status for c in one.stub.calls if c.status != 200]
    assert refused == [429, 429, 500, 500, 500]
    assert len(told := one.events_of("Drained")) == 1, told

    # The other two datacenters serve every image ever acknowledged, byte-exact.
    one.holds("dc-b gets only the prober's trickle", lambda: gateway.error_ratio(10, "dc-a") == 0.0, 10)
    assert gateway.lost(["dc-a", "dc-c"]) == []

    one.runner.sicken("dc-b", 0.0)
    healed = one.until("dc-b undrained", lambda: one.weights()["dc-b"] > 0, 600, 2)
    print(f"sick datacenter: undrained {healed:.0f}s after it recovered (5m window: 30 s, healthyPeriod 1m)")
    assert len(told := one.events_of("Undrained")) == 1, told
    one.until("the undrain is told in Slack", lambda: bool(one.messages("Undrained dc-b")), 30)
    assert gateway.lost(["dc-a", "dc-b", "dc-c"]) == []
    totals = gateway.totals()
    kept = len(gateway.uploaded)
    print(f"sick datacenter: {totals.sent} requests, {totals.failed} failed, {kept} images kept")
