"""What the demo's real-pod follower reads from a pod, and the game-day rule it writes: the
Gateway sends only to frontends the API says are ready and not leaving, and a sick
datacenter's rule names its frontend and the storage port alone."""

from __future__ import annotations

from typing import Any

import pytest

from testbed.realpods import GAME_DAY, cut_rule, observed


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
    assert rule[rule.index("--dport") + 1] == "8080"  # storage's port: probes and scrapes pass
    assert "-d" not in rule  # every storage node, in any datacenter
    assert rule[rule.index("--comment") + 1] == f"{GAME_DAY} demo-1a2b3c dc-b"
    assert rule[-3:] == ["REJECT", "--reject-with", "tcp-reset"]  # refused at once, no timeout
