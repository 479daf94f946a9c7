"""Acceptance: the leader dies in the middle of an incident; the standby carries it on.

Two operator replicas with their SLO loops; a bad rollout under traffic. The leader opens the
incident, tells Slack, and stops there (a failpoint: it keeps renewing its lease until it is
SIGKILLed). The standby takes the lease within its duration and goes on with what the first
one wrote on the ImageServer and its Postmortem: the same incident and Slack thread, one
rollback, and an incident cost counted across both leaders.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from testbed.mission import Mission

SPEC: dict[str, Any] = {
    "version": "1.0.0",
    "datacenters": [{"name": "dc-a", "frontendReplicas": 1}, {"name": "dc-b", "frontendReplicas": 1}],
    "storage": {"replicas": 1, "writeQuorum": 1},
    "notifications": {"slack": {"channel": "#oncall", "tokenSecretRef": {"name": "slack"}}},
    # "5m" covers 30 s: the incident ends half a minute after users are fine, not five.
    "slo": {"window": "3d"},
}
LEASE_SECONDS = 6  # the test bed's (OperatorProcesses.start)
THREAD = "imageserver.dev/slack-thread"


def holder(one: Mission) -> str:
    return one.operators.holder()


def test_a_leader_killed_mid_incident_is_followed_by_one_that_carries_the_incident_on(
    mission: Callable[..., Mission],
) -> None:
    one = mission(SPEC, faults={"1.1.0": 0.5}, operator_env={"IMAGESERVER_OPERATOR_FAILPOINT": "after-open"})
    processes = one.operators.state.processes
    leader = list(processes)[-1]
    one.until("the first replica leads", lambda: holder(one) == leader, 30, 0.5)
    one.operator_env = {}
    one.start_operator()  # the standby: the same SLO loop, without the failpoint
    standby = list(processes)[-1]
    one.holds("the first replica keeps the lease", lambda: holder(one) == leader, 2 * LEASE_SECONDS, 1)

    applied = time.time()
    one.apply(version="1.1.0")

    def opened_and_told() -> bool:
        postmortems = one.postmortems()
        return bool(postmortems) and THREAD in (postmortems[0]["metadata"].get("annotations") or {})

    one.until("the incident is opened and its thread recorded", opened_and_told, 120, 0.5)
    incident = one.annotations()["imageserver.dev/incident"]
    assert one.rollout().get("phase") != "Aborted"  # the leader stopped before acting

    popen = processes[leader].popen
    assert popen is not None
    popen.kill()
    killed = time.time()
    took_over = one.until("the standby leads", lambda: holder(one) == standby, 4 * LEASE_SECONDS, 0.2)
    rolled_back = took_over + one.until("rolled back", lambda: one.rolled_back("1.0.0"), 60, 0.5)
    print(
        f"failover: the standby led {took_over:.1f}s after the kill, rolled back {rolled_back:.1f}s after it"
    )
    # client-go's rule: the lease is taken once its record has not changed for its duration,
    # as the standby measures it from when it first saw that record (up to one of its rounds
    # after the last renewal), at its first round after that (up to one more): the duration
    # and two renew periods (a third of the duration each) at most, and a second for the poll.
    assert took_over <= LEASE_SECONDS + 2 * LEASE_SECONDS / 3 + 1

    def resolved() -> bool:
        return bool(one.postmortems()[0]["spec"].get("state") == "Resolved")

    one.until("the incident is resolved", resolved, 240, 1)
    ended = time.time()
    postmortems = one.postmortems()
    assert [p["metadata"]["name"] for p in postmortems] == [incident]
    assert len(told := one.events_of("RolledBack")) == 1, told
    assert len(told := one.events_of("IncidentOpened")) == 1, told

    # One Slack thread: the rollout's, which the first leader began and opened the incident
    # in; every later message, the standby's included, a reply in it.
    one.until("the resolution is told", lambda: bool(one.messages("Resolved")), 30)
    first, *replies = one.messages()
    assert "rolling out 1.1.0" in first["text"] and "thread_ts" not in first
    assert "is burning its error budget" in replies[0]["text"]
    assert {m.get("thread_ts") for m in replies} == {postmortems[0]["metadata"]["annotations"][THREAD]}
    assert len(one.messages("Rolled back 1.0.0")) == 1

    # The cost, counted by two leaders, against the failed answers users got at the Gateway.
    # (Requests no server answered, while pods are replaced, are in no server's metrics: the
    # Gateway counts them apart.)
    assert one.gateway is not None
    users = one.gateway.between(applied, ended)
    answered = users.failed - users.unanswered
    counted = postmortems[0]["spec"]["impact"]["failedRequestsEstimate"]
    leaderless = one.gateway.between(killed, killed + took_over).failed
    print(
        f"failover: {counted} failed requests in the Postmortem; the Gateway saw {answered} failed "
        f"answers ({leaderless} while no one led) and {users.unanswered} requests unanswered"
    )
    # Counted from the 5m rates cycle by cycle, which a burst this short (some 25 s, on
    # processes that live as long) leaves 18 % under to 7 % over the Gateway's count (seven
    # runs). Within 20 % then, or half a second of the 20 req/s: what the leaderless seconds
    # cost (44-45 of 77-88 failures, the rollout's errors for 7 s) is far outside that, lost or
    # counted twice.
    assert answered > 0 and abs(counted - answered) <= max(0.2 * answered, 10)
