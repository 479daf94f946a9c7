"""Remediation policy: observations + state + clock → actions, each with its reason.

Pure, so every rule is a table test and every safety promise a property:
- no action without data (Prometheus down, no series, or too little traffic to judge);
- no action inside the cooldown after the last one;
- never drain the last healthy datacenter, never more than maxDrained at once, and only
  when the others can absorb the traffic with the spec's headroom;
- dryRun decides and reports but marks nothing executable; off and the pause annotation act
  on nothing.

Burn rates are multiples of the error budget (1.0 = spending exactly the budget over the
window). "Page level" is the SRE Workbook's fast burn: over 14.4 on both 1h and 5m, or over
6 on both 6h and 30m.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from imageserver_operator.api import durations
from imageserver_operator.api.models import RemediationSpec
from imageserver_operator.core.slo import BURN_ALERTS, SHORT, over

Burn = Mapping[str, float]  # window ("5m", "1h", …) → burn rate
ActionKind = Literal["rollback", "drain", "undrain", "page", "notify_unknown"]
HEALTHY_BURN = 1.0  # at or under budget
# "Cannot judge" is told only once it lasts: a start-up or a short Prometheus restart is no news.
UNKNOWN_GRACE = datetime.timedelta(minutes=1)


def duration(text: str) -> datetime.timedelta:
    return durations.parse(text)


PAGE_FAST = next(a.factor for a in BURN_ALERTS if a.severity == "page" and a.short == SHORT)


def page_level(burn: Burn) -> bool:
    """Over a page's factor on both windows of one of the table's page rows (slo.py)."""
    return over(burn, "page")


def ticket_level(burn: Burn) -> bool:
    return over(burn, "ticket")


def recovered(burn: Burn) -> bool:
    """Within budget now: the short window only. The 1h window of a datacenter that was just
    sick keeps its errors for an hour; holding a recovered datacenter drained that long would
    leave the others without headroom for no reason. `healthyPeriod` guards against flapping."""
    return SHORT in burn and burn[SHORT] <= HEALTHY_BURN


# The low-traffic guard: below it, a ratio of a handful of requests judges nothing.
MIN_REQUESTS_PER_SECOND = 0.1
# Failed requests of a revision in the short window before its page-level burn is acted on.
MIN_PAGE_ERRORS = 10


def describe(burn: Burn) -> str:
    return ", ".join(f"{burn[w]:.1f}x over {w}" for w in ("5m", "1h", "6h") if w in burn)


@dataclass(frozen=True)
class Observation:
    """What Prometheus said this cycle. `reachable` False or empty burns mean: no data."""

    reachable: bool
    requests_per_second: float = 0.0
    service: Burn = field(default_factory=dict)
    by_datacenter: Mapping[str, Burn] = field(default_factory=dict)
    by_revision: Mapping[str, Burn] = field(default_factory=dict)
    errors_per_second: float = 0.0
    budget_spent: float | None = None  # share of the SLO window's error budget spent so far
    by_datacenter_revision: Mapping[str, Burn] = field(default_factory=dict)  # "dc-a/1.0.0" → 5m burn
    # Images held by storage nodes whose shard no longer owns them; None: not reported.
    rebalance_remaining: float | None = None
    # Frontends scraped per datacenter, traffic or not; None: not reported.
    frontends_by_datacenter: Mapping[str, float] | None = None
    # Requests, errors and slow requests a second by "datacenter/revision" (short window): what
    # a rollout's wave and its control served.
    rates_by_datacenter_revision: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Datacenter:
    name: str
    frontend_replicas: int
    drained: bool = False
    healthy_since: datetime.datetime | None = None  # for drained ones: healthy continuously since
    weight: int = 100  # its share of traffic in the spec; 0: serves nobody


@dataclass(frozen=True)
class State:
    """What the ImageServer says: its policy, datacenters, revisions, past actions."""

    remediation: RemediationSpec
    datacenters: tuple[Datacenter, ...]
    current_revision: str
    previous_revision: str = ""
    current_since: datetime.datetime | None = None
    last_action_at: datetime.datetime | None = None
    paused: bool = False
    unknown_notified: bool = False  # "no data" already told once
    unknown_since: datetime.datetime | None = None  # judged Unknown continuously since
    rolling_out: bool = False  # workloads are still moving to the spec (Progressing=True)
    previous_baseline: Burn | None = None  # the previous revision's burn while it was current
    min_requests_per_second: float = MIN_REQUESTS_PER_SECOND
    serving: Mapping[str, str] = field(default_factory=dict)  # datacenter → revision; absent: current
    canary_failed: str = ""  # a rollout wave's verdict was fail: why, with its numbers
    short_window_seconds: float = 300.0  # what the "5m" window covers (30 s for a 3-day SLO)
    # Requests/s a frontend pod carries by the capacity plan (status.capacity); None: the
    # hand-set remediation.drain.replicaCapacityRps.
    planned_replica_rps: float | None = None


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    reason: str
    target: str = ""  # revision for rollback, datacenter for (un)drain
    execute: bool = True  # False in dryRun, off or paused: report only
    # A canary abort only returns to the version that ran before and cannot flap (the rejected
    # version is not retried by itself): no cooldown holds it back.
    cooldown: bool = True


@dataclass(frozen=True)
class Decision:
    slo_healthy: Literal["True", "False", "Unknown"]
    summary: str
    actions: tuple[Action, ...] = ()
    paging: bool = False  # the service burns at page level and users are hurt now: an incident
    recovered: bool = False  # what serves users now is within budget: an incident can end


def burning_revisions(observed: Observation, short_window_seconds: float) -> dict[str, str]:
    """The revisions burning the budget at page level, with their burn rates: none from no
    data, nor when the service is too quiet for a ratio to mean anything, nor on a handful
    of failures (evident)."""
    if not observed.reachable or observed.requests_per_second < MIN_REQUESTS_PER_SECOND:
        return {}
    return {
        revision: describe(burn)
        for revision, burn in observed.by_revision.items()
        if page_level(burn) and evident(observed, revision, short_window_seconds)
    }


def evident(observed: Observation, revision: str, short_window_seconds: float) -> bool:
    """A revision's page-level burn rests on at least MIN_PAGE_ERRORS failed requests in the
    short window. A new revision's first requests are few: one failure in its first five is
    a 20 % error ratio on every window, far past the page factor, and says nothing (a good
    build failing 0.5 % would be rolled back one time in forty). Without its rates, the burn
    alone decides, as it always did."""
    rates = [r for key, r in observed.rates_by_datacenter_revision.items() if key.endswith(f"/{revision}")]
    if not rates:
        return True
    return sum(r.get("errors", 0.0) for r in rates) * short_window_seconds >= MIN_PAGE_ERRORS


def decide(observed: Observation, state: State, now: datetime.datetime) -> Decision:
    if not observed.reachable or not observed.service:
        why = "Prometheus is unreachable" if not observed.reachable else "Prometheus has no SLO data yet"
        return _unknown(state, why, now)
    if observed.requests_per_second < state.min_requests_per_second:
        return _unknown(state, f"too little traffic to judge ({observed.requests_per_second:.2f} req/s)", now)

    actions = _planned(observed, state, now)
    burning = page_level(observed.service) or ticket_level(observed.service)
    summary = f"burn {describe(observed.service)}" if observed.service else "no burn"
    quiet = silent(observed, state)
    if quiet:
        summary += f"; no data from {', '.join(quiet)}, which should serve traffic"
    final = _final(state, actions, now)
    told = any(a.kind == "notify_unknown" for a in _unknown(state, summary, now).actions)
    if quiet and not burning and told:
        final.append(Action("notify_unknown", f"no action: {summary}"))
    return Decision(
        "False" if burning else "Unknown" if quiet else "True",
        summary,
        tuple(final),
        paging=page_level(observed.service) and users_hurt(observed, state),
        recovered=users_fine(observed, state) and not quiet,
    )


def _final(state: State, actions: list[Action], now: datetime.datetime) -> list[Action]:
    """The actions after the cooldown, the mode and the pause (reported, not executed)."""
    act = state.remediation.mode == "auto" and not state.paused
    in_cooldown = state.last_action_at is not None and now - state.last_action_at < duration(
        state.remediation.cooldown
    )
    return [
        dataclasses.replace(action, execute=act or action.kind == "page")
        for action in actions
        if not (action.kind in ("rollback", "drain", "undrain") and in_cooldown and action.cooldown)
    ]


def silent(observed: Observation, state: State) -> list[str]:
    """Datacenters that should serve traffic (weight, not drained) none of whose frontends is
    heard from: dead or unscraped (without that count: those without a short-window ratio,
    which a quiet datacenter has too). Nothing there can be judged healthy, so no incident
    ends and nothing is undrained on their account (and no other datacenter is drained
    either: a drain needs every other datacenter seen healthy)."""
    heard = observed.frontends_by_datacenter
    return [
        dc.name
        for dc in state.datacenters
        if not dc.drained
        and dc.weight > 0
        and (
            not heard.get(dc.name, 0)
            if heard is not None  # no frontend scraped there
            else SHORT not in observed.by_datacenter.get(dc.name, {})  # no ratio: no request either
        )
    ]


def _serving(observed: Observation, state: State, dc: Datacenter) -> Burn:
    """The burn of what a datacenter serves now: its revision (a rollout's waves differ)."""
    revision = state.serving.get(dc.name, state.current_revision)
    return observed.by_datacenter_revision.get(f"{dc.name}/{revision}", {})


def users_hurt(observed: Observation, state: State) -> bool:
    """Something that serves users now burns at page level on the 5m window (a rollout or a
    lingering long window alone is not harm). Opening at 14.4x and resolving at 1x is the
    hysteresis that keeps an incident from flapping on stray errors."""
    serving = [_serving(observed, state, dc) for dc in state.datacenters if not dc.drained]
    return any(burn.get("5m", 0.0) > PAGE_FAST for burn in serving)


def users_fine(observed: Observation, state: State) -> bool:
    """What serves users now (the current revision in every datacenter still routed traffic,
    the rollout finished) is within budget on the 5m window. The service's windows remember
    an incident long after a rollback or drain ended it; this says when users stopped being
    hurt."""
    if state.rolling_out:
        return False  # a mitigation still rolling out has not ended anything yet
    serving = [_serving(observed, state, dc) for dc in state.datacenters if not dc.drained]
    judged = [burn for burn in serving if "5m" in burn]
    return bool(judged) and all(recovered(burn) for burn in judged)


def _unknown(state: State, why: str, now: datetime.datetime) -> Decision:
    lasting = state.unknown_since is not None and now - state.unknown_since >= UNKNOWN_GRACE
    tell = lasting and not state.unknown_notified
    told = (Action("notify_unknown", f"no action: {why}"),) if tell else ()
    # A failed wave is judged on its own counts against its control: evidence even when the
    # service as a whole is too quiet (or unscraped) to judge.
    aborted = tuple(_final(state, _canary_abort(state), now))
    return Decision("Unknown", why, (*aborted, *told))


def planned(observed: Observation, state: State, now: datetime.datetime) -> list[Action]:
    """What the policy would do now, before the cooldown, the mode and the pause."""
    return _planned(observed, state, now)


def _canary_abort(state: State) -> list[Action]:
    if not (state.canary_failed and state.previous_revision and state.remediation.rollback.enabled):
        return []
    # A wave failed against its control: back to stable before it reaches more users.
    return [
        Action(
            "rollback",
            f"the rollout of {state.current_revision} failed its canary verdict ({state.canary_failed}): "
            f"rolling back to {state.previous_revision} in every datacenter",
            target=state.previous_revision,
            cooldown=False,
        )
    ]


def _planned(observed: Observation, state: State, now: datetime.datetime) -> list[Action]:
    aborted = _canary_abort(state)
    if aborted:
        return aborted
    rollback = _rollback(observed, state, now)
    drains = _drains(observed, state)
    if rollback and not (drains and _rollout_complete(observed, state)):
        return [rollback]
    if drains:
        return drains
    undrains = [] if silent(observed, state) else _undrains(observed, state, now)
    if page_level(observed.service) and users_hurt(observed, state):
        return [
            *undrains,
            Action(
                "page",
                f"the service burns ({describe(observed.service)}) and no single revision or "
                "datacenter explains it: paging, no automatic action",
            ),
        ]
    return undrains


def _rollback(observed: Observation, state: State, now: datetime.datetime) -> Action | None:
    policy = state.remediation.rollback
    current = observed.by_revision.get(state.current_revision, {})
    if not policy.enabled or not state.previous_revision or not page_level(current):
        return None
    if not evident(observed, state.current_revision, state.short_window_seconds):
        return None  # a handful of failures of a new revision: the next cycles will tell
    if state.current_since is None or now - state.current_since > duration(policy.window):
        return None  # not a recent rollout: the revision is not the likely cause
    # How the previous revision did while it was current: during the rollout its pods fail
    # too when they depend on new ones (frontends reading from bad storage), which is no sign
    # against it. Without that memory (a restarted operator), what it does now.
    previous = state.previous_baseline
    if previous is None:
        previous = observed.by_revision.get(state.previous_revision, {})
    if page_level(previous):
        return None  # the previous revision burned too: rolling back would not help
    age = int((now - state.current_since).total_seconds() // 60)
    return Action(
        "rollback",
        f"revision {state.current_revision}, rolled out {age} min ago, burns {describe(current)} the error "
        f"budget (page level) while {state.previous_revision} did not: rolling back to "
        f"{state.previous_revision}",
        target=state.previous_revision,
    )


def _rollout_complete(observed: Observation, state: State) -> bool:
    """No request reached the previous revision in the last 5 minutes: every datacenter runs
    the current one. Then burn in one datacenter while the others are healthy says the
    datacenter is sick, not the revision (which serves the healthy ones fine)."""
    return "5m" not in observed.by_revision.get(state.previous_revision, {})


def _drains(observed: Observation, state: State) -> list[Action]:
    policy = state.remediation.drain
    if not policy.enabled:
        return []
    # A datacenter without weight serves nobody: it neither absorbs traffic nor must look healthy.
    active = [dc for dc in state.datacenters if not dc.drained and dc.weight > 0]
    # Sick: burning at page level and still failing now. Healthy: serving fine now (the 1h
    # window of every datacenter still remembers an incident that just ended elsewhere).
    sick = [
        dc
        for dc in active
        if page_level(observed.by_datacenter.get(dc.name, {}))
        and not recovered(_serving(observed, state, dc))
    ]
    others = [dc for dc in active if dc not in sick]
    if not sick or not others:
        return []  # nothing concentrated, or it burns everywhere
    if len(set(state.serving.values())) > 1 and any(
        state.serving.get(dc.name) == state.current_revision for dc in sick
    ):
        return []  # mid-rollout, burning where the new version runs: the version, not the place
    if not all(recovered(_serving(observed, state, dc)) for dc in others):
        return []  # the others are not healthy: not concentrated in one place
    already = sum(dc.drained for dc in state.datacenters)
    room = policy.max_drained - already
    if room < len(sick):
        return []  # would exceed maxDrained
    per_replica = state.planned_replica_rps or policy.replica_capacity_rps
    source = "the capacity plan" if state.planned_replica_rps else "remediation.drain.replicaCapacityRps"
    capacity = sum(dc.frontend_replicas for dc in others) * per_replica
    limit = 1 - policy.headroom_percent / 100
    load = observed.requests_per_second / capacity if capacity else float("inf")
    if load > limit:
        return []  # the others could not absorb the traffic with the required headroom
    names = ", ".join(dc.name for dc in others)
    return [
        Action(
            "drain",
            f"{dc.name} burns {describe(observed.by_datacenter[dc.name])} the error budget (page level) "
            f"while {names} are healthy; they absorb its traffic at {load:.0%} of their capacity "
            f"(limit {limit:.0%} with {policy.headroom_percent}% headroom; {per_replica:,.0f} requests/s "
            f"per frontend pod by {source})",
            target=dc.name,
        )
        for dc in sick
    ]


def _undrains(observed: Observation, state: State, now: datetime.datetime) -> list[Action]:
    period = duration(state.remediation.drain.healthy_period)
    actions = []
    for dc in state.datacenters:
        if (
            not dc.drained
            or dc.healthy_since is None
            or not recovered(observed.by_datacenter.get(dc.name, {}))
        ):
            continue
        if now - dc.healthy_since >= period:
            minutes = int((now - dc.healthy_since).total_seconds() // 60)
            actions.append(
                Action(
                    "undrain",
                    f"{dc.name} has been healthy for {minutes} min "
                    f"(at least {state.remediation.drain.healthy_period}): routing traffic "
                    "to it again",
                    target=dc.name,
                )
            )
    return actions
