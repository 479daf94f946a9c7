"""Acceptance: the control plane restarts under a running operator.

kube-apiserver, and separately etcd, are stopped and started again while the operator runs.
Its watches must come back by themselves: a bad rollout applied after the restart reaches
the workloads (the reconcile loop sees the new spec) and is rolled back (the SLO loop acts).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from testbed.cluster import Cluster, restart
from testbed.mission import Mission

SPEC: dict[str, Any] = {
    "version": "1.0.0",
    "datacenters": [{"name": "dc-a", "frontendReplicas": 1}, {"name": "dc-b", "frontendReplicas": 1}],
    "storage": {"replicas": 1, "writeQuorum": 1},
    "notifications": {"slack": {"channel": "#oncall", "tokenSecretRef": {"name": "slack"}}},
}


def last_action(one: Mission) -> dict[str, Any]:
    return dict(json.loads(one.annotations().get("imageserver.dev/last-action", "{}")))


@pytest.mark.disruptive
@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_after_a_control_plane_restart_a_bad_rollout_is_still_rolled_back(
    mission: Callable[..., Mission], cluster: Cluster, component: str
) -> None:
    one = mission(SPEC, faults={"1.1.0": 0.5})
    one.holds("no action on a healthy service", lambda: not last_action(one), 10)

    restart(cluster, component)
    one.apply(version="1.1.0")
    one.until("1.1.0 serves errors", lambda: one.errors_seen('revision="1.1.0"'), 90, 0.5)
    rolled = one.until("rolled back to 1.0.0", lambda: one.rolled_back("1.0.0"), 120, 0.5)
    print(f"{component} restarted: the bad rollout was rolled back {rolled:.0f}s after it served errors")
    assert len(told := one.events_of("RolledBack")) == 1, told
