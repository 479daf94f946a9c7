"""Acceptance: a bad rollout under real traffic is rolled back by the operator on its own,
once, even when the operator is killed right after deciding.

Real pieces: the API server and controllers, the operator (reconcile and SLO loops), the
pod runner's imageserver processes, Prometheus with the generated rules, the Slack stub, the
Gateway's traffic. The bad build is the test bed's: processes of 1.1.0 fail half their requests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from testbed.mission import Mission

SPEC: dict[str, Any] = {
    "version": "1.0.0",
    "datacenters": [{"name": "dc-a", "frontendReplicas": 1}, {"name": "dc-b", "frontendReplicas": 1}],
    "storage": {"replicas": 1, "writeQuorum": 1},
    "notifications": {"slack": {"channel": "#oncall", "tokenSecretRef": {"name": "slack"}}},
    # "5m" covers 30 s: errors of the bring-up leave the short window in half a minute.
    "slo": {"window": "3d"},
}
BAD = {"1.1.0": 0.5}


def last_action(one: Mission) -> dict[str, Any]:
    return dict(json.loads(one.annotations().get("imageserver.dev/last-action", "{}")))


def healthy_first(one: Mission) -> None:
    """Seen healthy before the bad build: how 1.0.0 did while current is what tells a bad build
    from 1.0.0's pods failing through 1.1.0's storage mid-rollout (a 1.0.0 remembered as
    burning, from errors of the bring-up, makes the operator page or drain instead)."""

    def slo_healthy() -> bool:
        conditions = one.imageserver().get("status", {}).get("conditions", [])
        return any(c["type"] == "SLOHealthy" and c["status"] == "True" for c in conditions)

    one.until("the SLO is judged healthy", slo_healthy, 120, 1)
    one.holds("no action on a healthy service", lambda: not last_action(one) and slo_healthy(), 10)


def test_a_bad_rollout_is_rolled_back_within_two_minutes(mission: Callable[..., Mission]) -> None:
    one = mission(SPEC, faults=BAD)
    healthy_first(one)

    one.apply(version="1.1.0")
    errors = one.until("1.1.0 serves errors", lambda: one.errors_seen('revision="1.1.0"'), 60, 0.5)
    started = time.monotonic()
    detected = one.until(
        "an incident is opened", lambda: "imageserver.dev/incident" in one.annotations(), 120, 0.5
    )
    mitigated = one.until("rolled back to 1.0.0", lambda: one.rolled_back("1.0.0"), 120, 0.5)
    mitigated += detected
    print(f"bad rollout: errors {errors:.0f}s after the apply; TTD {detected:.0f}s, TTM {mitigated:.0f}s")
    assert time.monotonic() - started <= 120

    annotations = one.annotations()
    assert last_action(one) | {"at": ""} == {
        "kind": "rollback",
        "target": "1.0.0",
        "at": "",
        "incident": annotations["imageserver.dev/incident"],
        "reason": annotations["imageserver.dev/rollback-reason"],
        "done": True,
    }
    assert "rolling back to 1.0.0" in annotations["imageserver.dev/rollback-reason"]
    assert len(one.postmortems()) == 1

    # One Slack thread: the incident's first message, everything else a reply to it.
    one.until("the rollback is told in Slack", lambda: bool(one.messages("Rolled back 1.0.0")), 30)
    first, *replies = one.messages()
    assert "thread_ts" not in first and replies
    assert all(m.get("thread_ts") for m in replies), [(m["text"], m.get("thread_ts")) for m in one.messages()]
    assert len({m["thread_ts"] for m in replies}) == 1

    # Users are fine again once 1.0.0 serves everywhere: back to the 0 % baseline.
    gateway = one.gateway
    assert gateway is not None
    one.until("error ratio back to baseline", lambda: gateway.error_ratio(10) == 0.0, 90)
    assert len(told := one.events_of("RolledBack")) == 1, told


def test_killed_right_after_deciding_to_roll_back_then_restarted_rolls_back_exactly_once(
    mission: Callable[..., Mission],
) -> None:
    one = mission(SPEC, faults=BAD, operator_env={"IMAGESERVER_OPERATOR_FAILPOINT": "after-record"})
    operator = list(one.operators.state.processes.values())[-1].popen  # the one with the SLO loop
    assert operator is not None
    healthy_first(one)

    one.apply(version="1.1.0")
    one.until("the operator decides and dies", lambda: operator.poll() is not None, 120, 0.5)
    assert operator.returncode == -9  # SIGKILL, at the failpoint
    recorded = last_action(one)
    assert (recorded["kind"], recorded["target"], recorded["done"]) == ("rollback", "1.0.0", False)
    assert one.rollout().get("phase") != "Aborted"  # decided, not taken

    one.operator_env = {}
    one.start_operator()
    one.until("rolled back after the restart", lambda: one.rolled_back("1.0.0"), 60)
    assert last_action(one)["done"] is True
    # The bad revision keeps burning while pods roll: nothing more may happen.
    one.holds("exactly one rollback", lambda: one.reasons().count("RolledBack") == 1, 20)
    assert one.rolled_back("1.0.0") and one.imageserver()["spec"]["version"] == "1.1.0"  # the user's spec
    one.until("the rollback is told in Slack", lambda: bool(one.messages("Rolled back 1.0.0")), 30)
    assert len(one.messages("Rolled back 1.0.0")) == 1
    assert "completed after an operator restart" in one.messages("Rolled back 1.0.0")[0]["text"]
