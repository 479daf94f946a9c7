"""What the demo's real-pod follower reads from a pod, where the Gateway may send, and the
game-day rules: a sick datacenter's rule names its frontend and the storage port alone, and
the rules are read back by namespace (to heal one demo's and not another's)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, cast

import pytest

from testbed.cluster import Cluster
from testbed.realpods import GAME_DAY, Pod, RealPods, cut_rule, observed, rules_of


def pod(
    *, phase: str = "Running", ip: str | None = "10.201.1.7", ready: bool = True, deleted: bool = False
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": "shop-frontend-dc-b-5d9f-x2",
        "labels": {
            "app.kubernetes.io/component": "frontend",
            "app.kubernetes.io/instance": "shop",
            "imageserver.dev/datacenter": "dc-b",
        },
    }
    if deleted:
        meta["deletionTimestamp"] = "2026-12-08T00:00:00Z"
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if ip:
        status["podIP"] = ip
    containers = [{"name": "imageserver", "ports": [{"name": "http", "containerPort": 8081}]}]
    return {"metadata": meta, "spec": {"containers": containers}, "status": status}


def test_a_running_ready_pod_is_read_with_its_address_port_and_labels() -> None:
    seen = observed(pod())
    assert seen is not None
    assert (seen.role, seen.datacenter, seen.imageserver) == ("frontend", "dc-b", "shop")
    assert seen.url == "http://10.201.1.7:8081"
    assert seen.ready and not seen.leaving


@pytest.mark.parametrize(
    ("story", "item"),
    [
        ("no address yet", pod(ip=None)),
        ("still pending", pod(phase="Pending")),
        ("finished", pod(phase="Succeeded")),
    ],
)
def test_a_pod_without_a_process_to_reach_is_not_followed(story: str, item: dict[str, Any]) -> None:
    assert observed(item) is None, story


def test_not_ready_and_leaving_are_told_apart() -> None:
    waiting = observed(pod(ready=False))
    leaving = observed(pod(deleted=True))
    assert waiting is not None and not waiting.ready and not waiting.leaving
    assert leaving is not None and leaving.leaving  # scraped still, sent nothing


def test_the_game_day_rule_refuses_one_frontends_connections_to_storage_only() -> None:
    frontend = observed(pod())
    assert frontend is not None
    rule = cut_rule("demo-1a2b3c", frontend, 8080)
    assert rule[0] == "FORWARD"
    assert rule[rule.index("-s") + 1] == "10.201.1.7"  # its own address, as the source
    assert rule[rule.index("--dport") + 1] == "8080"  # the frontend's connections to storage:
    # what reaches it (probes, scrapes, users) comes from elsewhere, and its answers go out
    # from port 8080 to theirs
    assert "-d" not in rule  # every storage node, in any datacenter
    assert rule[rule.index("--comment") + 1] == f"{GAME_DAY} demo-1a2b3c dc-b"
    assert rule[-3:] == ["REJECT", "--reject-with", "tcp-reset"]  # refused at once, no timeout


def test_game_day_rules_are_read_back_by_namespace_and_others_left_alone() -> None:
    def game_day(address: str, namespace: str) -> str:
        return (
            f"-A FORWARD -s {address}/32 -p tcp -m tcp --dport 8080 -m comment "
            f'--comment "{GAME_DAY} {namespace} dc-b" -j REJECT --reject-with tcp-reset'
        )

    listed = "\n".join(
        [
            "-P FORWARD ACCEPT",
            '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
            game_day("10.201.1.7", "demo-1"),
            game_day("10.201.1.9", "demo-10"),
        ]
    )
    found = rules_of(listed)
    assert set(found) == {"demo-1", "demo-10"}  # one namespace is no prefix of another
    (rule,) = found["demo-1"]
    assert rule[:3] == ["FORWARD", "-s", "10.201.1.7/32"]  # as `iptables -D` takes it
    assert rule[rule.index("--comment") + 1] == f"{GAME_DAY} demo-1 dc-b"  # unquoted


def following(*pods: Pod, ready_for: float = 10.0) -> RealPods:
    """RealPods that saw these pods, the ready ones `ready_for` seconds ago (no API read)."""
    follower = RealPods(cast(Cluster, None), "demo-1", Path(tempfile.mkdtemp()))
    follower.pods = {p.pod: p for p in pods}
    follower._ready_since = {p.pod: time.monotonic() - ready_for for p in pods if p.ready and not p.leaving}
    return follower


def frontend(name: str, datacenter: str, *, ready: bool = True, leaving: bool = False) -> Pod:
    return Pod(name, "frontend", datacenter, "shop", "10.201.1.7", 8080, ready=ready, leaving=leaving)


def test_the_gateway_sends_to_ready_frontends_and_to_draining_ones_only_when_none_is_ready() -> None:
    old, new = frontend("old", "dc-a", ready=False, leaving=True), frontend("new", "dc-a")
    other = frontend("b", "dc-b")
    assert [p.pod for p in following(old, new, other).frontends("dc-a")] == ["new"]
    # The new one not ready yet (or not scraped yet): the old one drains the datacenter's traffic.
    assert [p.pod for p in following(old, frontend("new", "dc-a", ready=False)).frontends("dc-a")] == ["old"]
    assert [p.pod for p in following(old, new, ready_for=0.5).frontends("dc-a")] == ["old"]
    assert {p.pod for p in following(old, new, other).frontends(routable=False)} == {"old", "new", "b"}
