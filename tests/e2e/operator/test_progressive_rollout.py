"""Acceptance: a new version goes out wave by wave, each wave judged against the stable
version still running after it. A bad build never leaves the first wave, and the spec, which
is the user's, is never rewritten; a good build is promoted through every wave.

Real pieces: the API server and controllers, the operator (reconcile and SLO loops), the pod
runner's imageserver processes, Prometheus with the generated rules, the Slack stub, the
Gateway's 20 req/s. The bad build is the test bed's: processes of 1.1.0 fail 30 % of requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from imageserver_operator.api.durations import parse_time
from imageserver_operator.core import slo
from testbed.mission import Mission

SPEC: dict[str, Any] = {
    "version": "1.0.0",
    "datacenters": [
        {"name": "dc-a", "frontendReplicas": 1},
        {"name": "dc-b", "frontendReplicas": 1},
        {"name": "dc-c", "frontendReplicas": 1},
    ],
    # Two replicas: a wave's storage restarts one replica at a time, and reads find the other.
    "storage": {"replicas": 2, "writeQuorum": 1},
    "notifications": {"slack": {"channel": "#oncall", "tokenSecretRef": {"name": "slack"}}},
    "slo": {"window": "3d"},  # "5m" covers 30 s: the bring-up's errors are soon forgotten
    # A pass needs evidence: at 99.9 % the wave's upper bound must come within the margin,
    # about 200 requests for 5 points (1 point takes about 1,000: minutes at these rates).
    "rollout": {
        "waves": [["dc-a"], ["dc-b", "dc-c"]],
        "bake": "45s",
        "maxBake": "5m",
        "minRequests": 50,
        "errorMarginPercent": 5,
        "slowMarginPercent": 5,
    },
    # About rollouts: the bring-up's errors in the first datacenter must not get it drained.
    "remediation": {"drain": {"enabled": False}},
}


def served_by_revision(one: Mission) -> dict[str, float]:
    """Requests each revision's processes answered over the test (counters of processes that
    are gone included: the highest value each series reached)."""
    assert one.prometheus is not None
    job = slo.job_label(one.namespace, one.name)
    answer = one.prometheus.query(
        f'sum by (revision) (max_over_time(imageserver_http_requests_total{{job="{job}"}}[15m]))'
    )
    return {sample["metric"].get("revision", ""): float(sample["value"][1]) for sample in answer}


def datacenters_that_ran(one: Mission, revision: str) -> set[str]:
    assert one.prometheus is not None
    job = slo.job_label(one.namespace, one.name)
    selector = f'job="{job}", revision="{revision}"'
    answer = one.prometheus.query(
        f"count by (datacenter) (max_over_time(imageserver_build_info{{{selector}}}[15m]))"
    )
    return {sample["metric"].get("datacenter", "") for sample in answer}


def healthy_first(one: Mission) -> None:
    def slo_healthy() -> bool:
        conditions = one.imageserver().get("status", {}).get("conditions", [])
        return any(c["type"] == "SLOHealthy" and c["status"] == "True" for c in conditions)

    one.until("the SLO is judged healthy", slo_healthy, 120, 1)
    one.until("the rollout of 1.0.0 is complete", lambda: one.rollout().get("phase") == "Complete", 30)


def test_a_bad_build_never_leaves_the_first_wave(mission: Callable[..., Mission]) -> None:
    one = mission(SPEC, faults={"1.1.0": 0.3})
    healthy_first(one)

    one.apply(version="1.1.0")
    one.until("wave 1 takes 1.1.0", lambda: one.serving().get("dc-a") == "1.1.0", 60, 0.5)
    assert one.serving() == {"dc-a": "1.1.0", "dc-b": "1.0.0", "dc-c": "1.0.0"}
    errors = one.until("1.1.0 serves errors", lambda: one.errors_seen('revision="1.1.0"'), 60, 0.5)
    aborted = one.until("the rollout is aborted", lambda: one.rolled_back("1.0.0"), 120, 0.5)
    rollout = one.rollout()
    print(f"bad build: first 5xx seen {errors:.0f}s after wave 1; aborted {aborted:.1f}s after that")
    print(f"verdict: {rollout['verdict']}")
    assert one.imageserver()["spec"]["version"] == "1.1.0"  # the user's spec, as applied
    assert rollout["rejected"] == ["1.1.0"]
    condition = next(c for c in one.imageserver()["status"]["conditions"] if c["type"] == "Rollout")
    assert (condition["status"], condition["reason"]) == ("False", "Aborted")

    # A GitOps tool applies the same spec again: the rejected version stays rejected.
    one.apply()
    one.holds("1.1.0 is not rolled out again", lambda: set(one.serving().values()) == {"1.0.0"}, 20)
    served = served_by_revision(one)
    share = served.get("1.1.0", 0.0) / max(sum(served.values()), 1.0)
    print(f"1.1.0 served {served.get('1.1.0', 0):.0f} of {sum(served.values()):.0f} requests ({share:.1%})")
    assert datacenters_that_ran(one, "1.1.0") == {"dc-a"}
    assert len(told := one.events_of("RolledBack")) == 1, told
    assert len(one.postmortems()) == 1
    # Aborted by the wave's fail verdict, with the numbers behind it in the Postmortem.
    reason = one.annotations()["imageserver.dev/rollback-reason"]
    assert "failed its canary verdict (fail: " in reason, reason
    timeline = " ".join(e["event"] for e in one.postmortems()[0]["spec"]["timeline"])
    assert "canary verdict (fail: " in timeline and "errors" in timeline, timeline

    # One Slack thread: the rollout's, the incident its wave opened in it (shown in the
    # channel too), the rollback with the verdict's numbers a reply in it.
    one.until("the abort is told in Slack", lambda: bool(one.messages("Rolled back 1.0.0")), 30)
    first, *replies = one.messages()
    assert "rolling out 1.1.0" in first["text"] and "thread_ts" not in first and replies
    assert all(m.get("thread_ts") for m in replies), [(m["text"], m.get("thread_ts")) for m in one.messages()]
    assert len({m["thread_ts"] for m in replies}) == 1
    opened = one.messages("is burning its error budget")
    assert len(opened) == 1 and opened[0].get("reply_broadcast") in (True, "1", "true")
    assert "canary verdict (fail: " in str(one.messages("Rolled back 1.0.0")[0]["blocks"])


# Noise: both versions fail 0.5 % of requests, under a 99 % objective (0.5x its budget).
# The bake outlasts the evidence a pass needs (about 240 canary requests at 7 a second, which
# the counts of a new process's series reach some 7 s late: a pass about 55 s into the wave on
# an idle machine, some 70 s beside another story): promoted when the bake ends.
NOISY = {
    **SPEC,
    "slo": {"window": "3d", "availability": {"objective": 99.0}},
    "rollout": {**SPEC["rollout"], "bake": "90s"},
}
BAKE = 90


def test_a_good_build_is_promoted_through_every_wave(mission: Callable[..., Mission]) -> None:
    """On a service whose stable version already fails 0.5 % of requests, a new version that
    does the same is promoted, never aborted, and the promotion itself fails no request: every
    failure users saw meanwhile is one of the injected 0.5 % (the frontends', which say so)."""
    one = mission(NOISY, faults={"1.0.0": 0.005, "1.2.0": 0.005}, fault_roles=("frontend",))
    healthy_first(one)
    gateway = one.gateway
    assert gateway is not None

    started, wall = time.monotonic(), time.time()
    one.apply(version="1.2.0")
    one.until("wave 1 takes 1.2.0", lambda: one.serving().get("dc-a") == "1.2.0", 60, 0.5)
    trail: list[tuple[float, str]] = []  # the wave's verdicts as they changed, for the record

    def promoted_everywhere() -> bool:
        verdict = str(one.rollout().get("verdict", ""))
        if not trail or trail[-1][1] != verdict:
            trail.append((time.time(), verdict))
        return set(one.serving().values()) == {"1.2.0"}

    promoted = one.until("wave 2 takes 1.2.0", promoted_everywhere, 180, 0.5)
    took = time.monotonic() - started
    one.until("the rollout is complete", lambda: one.rollout().get("phase") == "Complete", 30)
    # From the start of wave 1 to the last wave: the bake and one evaluation interval (the
    # stamps are whole seconds).
    done = one.rollout()
    first, last = parse_time(done["startedAt"]), parse_time(done["waveSince"])
    assert first is not None and last is not None
    waves = (last - first).total_seconds()
    print(
        f"good build: wave 1 to every wave in {waves:.0f}s (bake {BAKE}s, a cycle every {one.slo_seconds:g}s)"
    )
    for at, verdict in trail:
        print(f"  +{at - first.timestamp():.0f}s {verdict}")
    assert waves <= BAKE + one.slo_seconds + 1
    one.until("every process runs 1.2.0", lambda: one.settled_on("1.2.0"), 60, 0.5)
    time.sleep(2)  # requests under way then are answered
    during = gateway.between(wall, time.time())
    print(f"good build: every wave on 1.2.0 {took:.0f}s after the apply ({promoted:.0f}s in wave 1)")
    print(f"during the promotion: {during.failed} of {during.sent} requests failed")
    failures = gateway.failed_between(wall, time.time())
    for failure in failures:
        print(f"  +{failure.at - wall:.1f}s {failure.datacenter} {failure.frontend or '-'}: {failure.what}")
    caused = [f for f in failures if not f.what.endswith(" injected")]
    assert caused == [], "\n".join(one.runner.logged("replica writes failed"))
    print(f"last verdict: {one.rollout()['verdict']}")
    reasons = one.reasons()
    assert reasons.count("RolloutStarted") == 1 and reasons.count("RolloutSucceeded") == 1
    assert "RolledBack" not in reasons and not one.postmortems()
    assert one.imageserver()["spec"]["version"] == "1.2.0"
    # Told in one Slack thread: its start, then its end with the passing verdict's numbers.
    one.until("the end is told in Slack", lambda: bool(one.messages("runs in every datacenter")), 30)
    opening, *rest = one.messages("1.2.0")
    assert "rolling out 1.2.0" in opening["text"] and "thread_ts" not in opening
    assert [m.get("thread_ts") for m in rest] == [rest[0]["thread_ts"]] * len(rest) and rest
    assert "pass: canary" in str(one.messages("runs in every datacenter")[0]["blocks"])


def test_a_wave_without_enough_requests_pauses_and_pages(mission: Callable[..., Mission]) -> None:
    """Below minRequests the verdict stays inconclusive; past maxBake the rollout pauses and
    pages, and the wave is never promoted without evidence."""
    rollout = {**SPEC["rollout"], "minRequests": 1_000_000, "bake": "10s", "maxBake": "40s"}
    one = mission({**SPEC, "rollout": rollout})
    healthy_first(one)
    one.apply(version="1.2.0")
    paused = one.until("the rollout pauses", lambda: one.rollout().get("phase") == "Paused", 120, 0.5)
    print(f"low traffic: paused {paused:.0f}s after the apply: {one.rollout()['verdict']}")
    assert "too few requests" in one.rollout()["verdict"]
    one.until("on-call is paged", lambda: bool(one.messages("paused in wave 1")), 30)
    one.holds(
        "never promoted", lambda: one.serving() == {"dc-a": "1.2.0", "dc-b": "1.0.0", "dc-c": "1.0.0"}, 15
    )
    assert "RolloutPaused" in one.reasons() and "RolloutSucceeded" not in one.reasons()
