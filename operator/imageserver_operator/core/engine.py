"""The incident engine: (an ImageServer as the API holds it, what Prometheus said, now) →
(the decision, what to remember, the effects to carry out). Pure.

Everything the SLO loop must remember lives on the ImageServer — its status (`automation`:
the incident's tally, the revisions' baselines, healthy-since and unknown-since clocks, the
notices already sent) and the annotations the operator owns (the open incident, the last
action's write-ahead record) — so a new leader goes on from where the last one stopped.

Effects run in order, and stop at the first write the API server refuses for a stale
`resourceVersion`: the memory is written first, then a record of each action before it
is taken, then the action with its record marked done in one write. Two leaders cannot
both act on one version of an ImageServer, and a crash leaves at worst a record not done,
which the next cycle judges again (`_resume`) before completing it.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from imageserver_operator.api import durations
from imageserver_operator.api.durations import parse_time, stamp
from imageserver_operator.api.models import (
    CAPACITY_INSUFFICIENT,
    GROUP,
    RELEASE_EXCEPTION_ANNOTATION,
    RELEASES_FROZEN,
    AutomationStatus,
    Baseline,
    BurnRate,
    Condition,
    DatacenterClock,
    Detection,
    ImageServerSpec,
    Impact,
    Links,
    PostmortemSpec,
    RolloutStatus,
    Tally,
    TimelineEntry,
)
from imageserver_operator.core import incidents, policy
from imageserver_operator.core import rollout as rollouts
from imageserver_operator.core.annotations import DRAINED_ANNOTATION, PAUSED_ANNOTATION
from imageserver_operator.core.messages import IncidentMessage, rollout_thread
from imageserver_operator.core.slo import SHORT, budget, ranges

ROLLBACK_REASON_ANNOTATION = f"{GROUP}/rollback-reason"
# An interrupted action older than this is not completed: the world it answered has moved on.
RESUME_WITHIN = datetime.timedelta(minutes=5)
# A long gap between two cycles (leadership moved, Prometheus was away) is counted at the rate
# seen after it for this long at most: four cycles, and never less than a lease changing hands.
MAX_GAP_CYCLES = 4
MAX_GAP = datetime.timedelta(seconds=60)
NOTICE_UNKNOWN = "-/notify_unknown/-"


@dataclass(frozen=True)
class Kind:
    """Everything the operator says and does about one kind of action, in one place."""

    runbook: str
    past: str  # "Drained b: …"
    reason: str  # the Event's reason when taken
    event_type: Literal["Normal", "Warning"]
    changes_world: bool  # False: only people are told


ROLLOUT_RUNBOOK = "runbooks/rollout.md"
MAX_EXCEPTIONS = 8
FREEZE_RUNBOOK = "runbooks/releases-frozen.md"
CAPACITY_RUNBOOK = "runbooks/capacity-insufficient.md"
CAPACITY_NOTICE = "capacity/"  # + the condition's lastTransitionTime
KINDS: Mapping[policy.ActionKind, Kind] = {
    "rollback": Kind("runbooks/rollback.md", "Rolled back", "RolledBack", "Warning", True),
    "drain": Kind("runbooks/drain.md", "Drained", "Drained", "Warning", True),
    "undrain": Kind("runbooks/undrain.md", "Undrained", "Undrained", "Normal", True),
    "page": Kind("runbooks/slo-burn-page.md", "Paged", "Paging", "Warning", False),
    "notify_unknown": Kind("runbooks/slo-unknown.md", "Told", "SLOUnknown", "Warning", False),
}

# How a timeline entry of an action that changed the world begins ("Rolled back 1.0.0: …"):
# the first one is when the incident was mitigated.
MITIGATIONS = tuple(kind.past for kind in KINDS.values() if kind.changes_world and kind.past != "Undrained")


# -- effects: what the executor does, in order ------------------------------------------------


@dataclass(frozen=True)
class WriteStatus:
    """The SLO loop's whole part of the status (`owned`), applied onto the version judged (a
    conflict stops the effects)."""

    patch: Mapping[str, Any]


@dataclass(frozen=True)
class Annotate:
    """Set (None: remove) annotations the operator owns, onto the version judged."""

    annotations: Mapping[str, str | None]


@dataclass(frozen=True)
class Record(Annotate):
    """An action's write-ahead record (not done): written before the action is taken."""


@dataclass(frozen=True)
class MarkTold(Annotate):
    """The record marked told, once everyone was. Bookkeeping only: when the object changed
    meanwhile (the reconcile loop answering the action), it is written onto the new version
    as long as the record there is still `expected` (the same action, not yet told), so a
    conflict does not tell people twice."""

    expected: str = ""


@dataclass(frozen=True)
class Fence(Annotate):
    """A write that changes nothing, onto the version judged: it fails when the copy judged
    is stale (a watch that has not caught up), so nothing is told twice from an old copy."""

    annotations: Mapping[str, str | None] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class RollBack:
    """Every datacenter back to `version`: the SLO loop's status with the rollout aborted, then
    the record marked done. The spec is never rewritten (a GitOps tool owns it)."""

    version: str
    status: Mapping[str, Any]
    annotations: Mapping[str, str | None]  # the reason, and the record marked done


@dataclass(frozen=True)
class Drain:
    """Drain or undrain: the drained set after it, with the record marked done."""

    datacenter: str
    drained: frozenset[str]
    annotations: Mapping[str, str | None]


@dataclass(frozen=True)
class PostEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Notify:
    message: IncidentMessage


@dataclass(frozen=True)
class OpenPostmortem:
    name: str
    spec: PostmortemSpec


@dataclass(frozen=True)
class AppendTimeline:
    incident: str
    entry: TimelineEntry
    resolution: str = ""  # added to what mitigated it


@dataclass(frozen=True)
class ResolvePostmortem:
    incident: str
    resolved_at: datetime.datetime
    impact: Impact
    p0_above_percent: float = 100.0  # spent more: the error budget policy asks for a P0 item


Effect = (
    WriteStatus
    | Annotate
    | Record
    | MarkTold
    | Fence
    | RollBack
    | Drain
    | PostEvent
    | Notify
    | OpenPostmortem
    | AppendTimeline
    | ResolvePostmortem
)
WRITES_WITH_PRECONDITION = (WriteStatus, Annotate, Record, MarkTold, Fence, RollBack, Drain)
TELLS = (PostEvent, Notify, OpenPostmortem, AppendTimeline, ResolvePostmortem)


def fenced(effects: Sequence[Effect]) -> tuple[Effect, ...]:
    """Effects that tell people (Events, Slack, the Postmortem) cannot be taken back: the first
    one comes after a write with a precondition, a Fence when no other write comes before it.
    A replica judging a stale copy is then refused before it tells anyone anything twice."""
    for index, effect in enumerate(effects):
        if isinstance(effect, WRITES_WITH_PRECONDITION):
            break
        if isinstance(effect, TELLS):
            return (*effects[:index], Fence(), *effects[index:])
    return tuple(effects)


# -- the input, parsed once at the edge --------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """One ImageServer as the API holds it."""

    namespace: str
    name: str
    generation: int
    spec: ImageServerSpec
    annotations: Mapping[str, str]
    status: Mapping[str, Any]

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Subject:
        """Raises ValidationError for a spec that cannot be read (Degraded says why)."""
        meta = body["metadata"]
        status = body.get("status") or {}
        return cls(
            str(meta["namespace"]),
            str(meta["name"]),
            int(meta.get("generation", 0)),
            ImageServerSpec.model_validate(body.get("spec", {})),
            dict(meta.get("annotations") or {}),
            status if isinstance(status, Mapping) else {},
        )

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def paused(self) -> bool:
        return self.annotations.get(PAUSED_ANNOTATION, "").lower() == "true"

    @property
    def drained(self) -> frozenset[str]:
        raw = self.annotations.get(DRAINED_ANNOTATION, "")
        return frozenset(part.strip() for part in raw.split(",") if part.strip())

    @property
    def rollout(self) -> RolloutStatus | None:
        return rollouts.of(self.status.get("rollout"))

    @property
    def running(self) -> str:
        """The revision (or revisions, mid-rollout) the datacenters run: not always
        spec.version, which still names an aborted one."""
        served = rollouts.serving(self.spec, self.rollout)
        return ", ".join(sorted(set(served.values()))) or self.spec.version

    @property
    def memory(self) -> AutomationStatus:
        try:
            return AutomationStatus.model_validate(self.status.get("automation") or {})
        except ValidationError:
            return AutomationStatus()  # a hand-edited status must not stop the automation

    def condition(self, type_: str) -> Mapping[str, Any]:
        conditions = self.status.get("conditions") or []
        return next((c for c in conditions if isinstance(c, Mapping) and c.get("type") == type_), {})


@dataclass(frozen=True)
class Verdict:
    decision: policy.Decision | None  # None: nothing judged (mode off, paused record, resume)
    effects: tuple[Effect, ...]
    memory: AutomationStatus


# -- the engine --------------------------------------------------------------------------------


def judge(
    subject: Subject, seen: policy.Observation, now: datetime.datetime, *, interval_seconds: float = 15.0
) -> Verdict:
    verdict = _judge(subject, seen, now, interval_seconds)
    return dataclasses.replace(verdict, effects=fenced(verdict.effects))


def _judge(
    subject: Subject, seen: policy.Observation, now: datetime.datetime, interval_seconds: float
) -> Verdict:
    memory = subject.memory
    moved = rollouts.step(
        subject.spec,
        subject.rollout,
        seen.rates_by_datacenter_revision if seen.reachable else None,
        now,
        gated=subject.spec.remediation.mode == "auto",
        hold=subject.paused,
        revisions=subject.status.get("revisions") or {},
        frozen=_frozen(subject, seen),
        exception=subject.annotations.get(RELEASE_EXCEPTION_ANNOTATION, "").strip(),
        burning=policy.burning_revisions(seen, _short_seconds(subject)),
    )
    state, baselines, healthy = _state(subject, seen, memory, now, moved)
    told = [*_rollout_notes(subject, moved), *_freeze_notes(subject, seen)]
    if subject.spec.remediation.mode == "off":  # watch only: the conditions and notices, no action
        watched = dataclasses.replace(policy.decide(seen, state, now), actions=())
        notified, tell_capacity = _capacity_told(subject, memory.notified)
        memory = _replace(memory, notified=notified)
        status = _status_slice(subject, seen, watched, memory, now, moved=moved)
        return Verdict(
            watched,
            (
                *((WriteStatus(status),) if status is not None else ()),
                *told,
                *((_capacity_note(subject),) if tell_capacity else ()),
            ),
            memory,
        )
    pending = incidents.interrupted(subject.annotations)
    if pending is not None:
        return Verdict(None, _resume(subject, seen, state, pending, now), memory)
    untold = incidents.untold(subject.annotations)
    if untold is not None:
        return Verdict(None, _tell_late(subject, seen, untold, now), memory)

    decision = policy.decide(seen, state, now)
    fine_since = (memory.fine_since or stamp(now)) if decision.recovered else ""
    annotated = subject.annotations.get(incidents.INCIDENT_ANNOTATION, "")
    # An incident whose opening was cut short (its name remembered, its annotation not
    # written): opened again, the same one (creating its Postmortem is idempotent).
    reopening = memory.opening if memory.opening and not annotated else ""
    open_incident = annotated or reopening
    fine_for = now - (parse_time(fine_since) or now)
    step = incidents.step(decision, open_incident, fine_for, subject.name, now)
    # Notices of actions outside any incident are told again once they stop being decided.
    decided = {f"/{a.kind}/{a.target}" for a in decision.actions}
    notified = [n for n in memory.notified if not n.startswith("/") or n in decided]
    # CapacityInsufficient is told once per time it turns True (the reconcile loop sets it);
    # remembered in the first status write, before the message goes out.
    notified, tell_capacity = _capacity_told(subject, notified)
    before = AutomationStatus(
        tally=_count(memory.tally, step.incident, seen, now, interval_seconds),
        baselines=baselines,
        healthy=[DatacenterClock(name=n, healthy_since=t) for n, t in sorted(healthy.items())],
        fine_since=fine_since,
        unknown_since=(memory.unknown_since or stamp(now)) if decision.slo_healthy == "Unknown" else "",
        notified=notified,
        opening=step.open_incident or reopening,
        # Releases let through a freeze, until the next incident's Postmortem records them.
        exceptions=[
            *memory.exceptions,
            *(f"{stamp(now)} {n.message}" for n in moved.notes if n.reason == "ReleaseException"),
        ][-MAX_EXCEPTIONS:],
    )
    after = before  # what is remembered once every effect is done
    effects: list[Effect] = []
    if step.open_incident or reopening:
        # Opened mid-rollout: in the rollout's thread, where its waves were told.
        waving = moved.rollout.phase == "Progressing"
        effects += _open(
            subject,
            seen,
            step.open_incident or reopening,
            decision,
            now,
            exceptions=before.exceptions,
            within=rollout_thread(subject.name, moved.rollout.target) if waving else "",
        )
        after = _replace(after, exceptions=[])
    drained = subject.drained
    first = _status_slice(subject, seen, decision, before, now, moved=moved)
    written: Mapping[str, Any] = first if first is not None else owned(subject.status)
    for action in step.actions:
        notice = f"{step.incident}/{action.kind}/{action.target}"
        if not (action.execute and KINDS[action.kind].changes_world):
            if notice in after.notified:
                continue  # told once per incident
            after = _remember(after, notice)  # once told: a page is sent at least once
            effects += _told(subject, seen, step.incident, action, now)
        else:
            acted, drained, written = _act(
                subject, step.incident, action, now, drained=drained, written=written
            )
            effects += acted
    if step.resolve:
        effects += _resolve(subject, step.incident, before.tally, now)
        after = _replace(
            after,
            tally=None,
            notified=[n for n in after.notified if not n.startswith(f"{step.incident}/")],
            opening="",
        )
    elif annotated and after.opening == annotated:
        after = _replace(after, opening="")  # its annotation is there: the opening is done
    if step.notify_unknown and NOTICE_UNKNOWN not in after.notified:
        after = _remember(after, NOTICE_UNKNOWN)
        effects += _unknown_notice(subject, decision)
    elif decision.slo_healthy != "Unknown" and NOTICE_UNKNOWN in after.notified:
        after = _replace(after, notified=[n for n in after.notified if n != NOTICE_UNKNOWN])
    last = {**written, "automation": _dump(after)} if after != before else None
    return Verdict(
        decision,
        (
            *((WriteStatus(first), *rebalancing_event(subject, seen, now)) if first is not None else ()),
            *told,
            *((_capacity_note(subject),) if tell_capacity else ()),
            *effects,
            *((WriteStatus(last),) if last is not None else ()),
        ),
        after,
    )


def _state(
    subject: Subject,
    seen: policy.Observation,
    memory: AutomationStatus,
    now: datetime.datetime,
    moved: rollouts.Step,
) -> tuple[policy.State, list[Baseline], dict[str, str]]:
    """The policy's state: the spec, the rollout, the ImageServer's annotations, and what the
    SLO loop remembers (updated with this observation: the baselines and healthy clocks)."""
    drained = subject.drained
    healthy = _healthy_clocks(subject, seen, memory, now)
    current, previous, since = _revisions(moved.rollout)
    verdict = moved.verdict
    baselines = _baselines(memory.baselines, current, previous, seen)
    baseline = next((b for b in baselines if b.revision == previous), None) if previous else None
    recorded = incidents.last_action(subject.annotations)
    state = policy.State(
        remediation=subject.spec.remediation,
        datacenters=tuple(
            policy.Datacenter(
                dc.name,
                dc.frontend_replicas,
                dc.name in drained,
                parse_time(healthy.get(dc.name, "")),
                weight=dc.weight,
            )
            for dc in subject.spec.datacenters
        ),
        current_revision=current,
        previous_revision=previous,
        current_since=parse_time(since),
        # A dropped action was never taken: it starts no cooldown.
        last_action_at=recorded.at if recorded is not None and not recorded.dropped else None,
        paused=subject.paused,
        unknown_notified=NOTICE_UNKNOWN in memory.notified,
        unknown_since=parse_time(memory.unknown_since),
        rolling_out=subject.condition("Progressing").get("status") == "True",
        previous_baseline=baseline.as_burn() if baseline is not None else None,
        serving=rollouts.serving(subject.spec, moved.rollout),
        canary_failed=verdict.message() if verdict is not None and verdict.outcome == "fail" else "",
        short_window_seconds=_short_seconds(subject),
        planned_replica_rps=_planned_replica_rps(subject),
    )
    return state, baselines, healthy


def _planned_replica_rps(subject: Subject) -> float | None:
    """What the reconcile loop's capacity plan says a frontend pod carries (status.capacity),
    while spec.capacity declares a load; None otherwise (or not yet planned)."""
    if subject.spec.capacity is None:
        return None
    planned = (subject.status.get("capacity") or {}).get("replicaCapacityRps")
    return float(planned) if isinstance(planned, int | float) and planned > 0 else None


def _capacity_told(subject: Subject, notified: list[str]) -> tuple[list[str], bool]:
    """The notices with the current CapacityInsufficient=True's (one per transition to True,
    none while it is False), and whether it is to be told now."""
    condition = subject.condition(CAPACITY_INSUFFICIENT)
    notice = (
        f"{CAPACITY_NOTICE}{condition.get('lastTransitionTime', '')}"
        if condition.get("status") == "True"
        else ""
    )
    kept = [n for n in notified if not n.startswith(CAPACITY_NOTICE) or n == notice]
    if not notice or notice in kept or subject.paused:
        return kept, False
    return [*kept, notice][-64:], True


def _capacity_note(subject: Subject) -> Effect:
    condition = subject.condition(CAPACITY_INSUFFICIENT)
    message = str(condition.get("message", ""))
    since = "".join(ch for ch in str(condition.get("lastTransitionTime", "")) if ch.isdigit())
    return Notify(
        IncidentMessage(
            f"{subject.name}-capacity-{since}",  # a thread of its own each time: seen in the channel
            "capacity",
            subject.where,
            "spec cannot carry its declared load (CapacityInsufficient)",
            reason=message[:2500],
            runbook=CAPACITY_RUNBOOK,
        )
    )


def _short_seconds(subject: Subject) -> float:
    """What the SLO's "5m" window covers for this ImageServer (30 s for a 3-day SLO)."""
    return durations.parse(ranges(subject.spec.slo.window)[SHORT]).total_seconds()


def _revisions(state: RolloutStatus) -> tuple[str, str, str]:
    """The revision users get now, the one a rollback returns to (none after an abort: the
    stable one runs everywhere), and since when the current one rolls out."""
    if state.phase == "Aborted":
        return state.stable, "", ""
    previous = state.stable if state.stable != state.target else ""
    # The rollback window counts from when the target reached every datacenter.
    return state.target, previous, state.wave_since if state.phase == "Complete" else state.started_at


def _dump(memory: AutomationStatus) -> dict[str, Any]:
    return memory.model_dump(by_alias=True, mode="json", exclude_none=True)


def failed(
    subject_status: Mapping[str, Any], generation: int, error: str, now: datetime.datetime
) -> Effect | None:
    """The status write that says this ImageServer's judgement failed (the others go on)."""
    condition = _condition(
        subject_status, "RemediationFailing", "True", "CycleFailed", error, generation=generation, now=now
    )
    if condition is None:
        return None
    mine = owned(subject_status)
    return WriteStatus({**mine, "conditions": _with(mine["conditions"], [condition])})


def _replace(memory: AutomationStatus, **changes: Any) -> AutomationStatus:
    return memory.model_copy(update=changes)


def _remember(memory: AutomationStatus, notice: str) -> AutomationStatus:
    # Bounded: the oldest notices go first (they belong to long-finished incidents).
    return _replace(memory, notified=[*memory.notified, notice][-64:])


def _healthy_clocks(
    subject: Subject, seen: policy.Observation, memory: AutomationStatus, now: datetime.datetime
) -> dict[str, str]:
    known = {c.name: c.healthy_since for c in memory.healthy}
    clocks = {}
    for dc in subject.spec.datacenters:
        if policy.recovered(seen.by_datacenter.get(dc.name, {})):
            clocks[dc.name] = known.get(dc.name) or stamp(now)
    return clocks


def _baselines(
    remembered: Sequence[Baseline], current: str, previous: str, seen: policy.Observation
) -> list[Baseline]:
    """How the current and the previous revision burned while each was current. Rewritten
    only when the current one's verdict changes, so a calm service writes nothing."""
    kept = {b.revision: b for b in remembered if b.revision in (current, previous)}
    burn = seen.by_revision.get(current)
    if burn:
        old = kept.get(current)
        level = policy.page_level(burn)
        if old is None or old.page_level != level:
            kept[current] = Baseline(
                revision=current,
                page_level=level,
                burn=[BurnRate(window=w, burn_rate=round(v, 2)) for w, v in burn.items()],
            )
    return [kept[r] for r in (previous, current) if r in kept]


def _count(
    tally: Tally | None,
    incident: str,
    seen: policy.Observation,
    now: datetime.datetime,
    interval_seconds: float,
) -> Tally | None:
    """This cycle's failed requests added to the open incident's tally. The time since the
    last counted cycle is counted (capped): a new leader counts the requests failed while
    the lease changed hands."""
    if not incident:
        return None
    tally = tally or Tally()
    last = parse_time(tally.counted_at)
    if not seen.reachable:
        return tally
    seconds = interval_seconds
    if last is not None:
        cap = max(MAX_GAP_CYCLES * interval_seconds, MAX_GAP.total_seconds())
        seconds = max(0.0, min((now - last).total_seconds(), cap))
    return incidents.add(tally, seen, seconds, now.isoformat())


SLO_CONDITIONS = ("SLOHealthy", "Rollout", RELEASES_FROZEN, "Rebalancing", "RemediationFailing")
SLO_FIELDS = ("errorBudgetRemaining", "rebalanceRemaining", "automation", "rollout")


def owned(status: Mapping[str, Any]) -> dict[str, Any]:
    """The SLO loop's part of a status as it stands. It is applied whole under the loop's own
    field manager, so the reconcile loop's fields are never written from a stale copy."""
    conditions = [c for c in status.get("conditions") or [] if c.get("type") in SLO_CONDITIONS]
    return {"conditions": conditions, **{k: status[k] for k in SLO_FIELDS if k in status}}


def _status_slice(
    subject: Subject,
    seen: policy.Observation,
    decision: policy.Decision,
    memory: AutomationStatus,
    now: datetime.datetime,
    *,
    moved: rollouts.Step,
) -> dict[str, Any] | None:
    """The SLO loop's part of the status to apply, or None when it would change nothing."""
    status = subject.status
    before = owned(status)
    after = dict(before)
    after["rollout"] = _dump_rollout(moved.rollout)
    if seen.budget_spent is not None:
        after["errorBudgetRemaining"] = f"{(1 - seen.budget_spent) * 100:.0f}%"  # whole percent: few writes
    reason = {"True": "WithinBudget", "False": "BurningBudget", "Unknown": "CannotJudge"}[
        decision.slo_healthy
    ]
    changed = [
        c
        for c in (
            _condition(
                status,
                "SLOHealthy",
                decision.slo_healthy,
                reason,
                decision.summary,
                generation=subject.generation,
                now=now,
                by_reason=True,
            ),
            _rollout_condition(subject, moved.rollout, now),
            _freeze_condition(subject, seen, now),
            rebalancing(subject, seen, now)[0],
            _condition(
                status, "RemediationFailing", "False", "Judged", "", generation=subject.generation, now=now
            )
            if subject.condition("RemediationFailing").get("status") == "True"
            else None,
        )
        if c is not None
    ]
    after["conditions"] = _with(before["conditions"], changed)
    if seen.rebalance_remaining is not None:
        after["rebalanceRemaining"] = round(seen.rebalance_remaining)
    if "automation" in status or memory != AutomationStatus():
        after["automation"] = _dump(memory)
    return after if after != before else None


def _with(
    conditions: Sequence[Mapping[str, Any]], changed: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    types = {c["type"] for c in changed}
    return [*(c for c in conditions if c.get("type") not in types), *changed]


def _condition(
    status: Mapping[str, Any],
    type_: str,
    value: str,
    reason: str,
    message: str,
    *,
    generation: int,
    now: datetime.datetime,
    by_reason: bool = False,
) -> dict[str, Any] | None:
    """The condition to write, or None when it says what it already says."""
    old: Mapping[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})
    if (
        old.get("status") == value
        and (not by_reason or old.get("reason") == reason)
        and (by_reason or old.get("message") == message)
    ):
        return None
    moved = old.get("status") != value
    return Condition(
        type=type_,
        status=value,  # type: ignore[arg-type]
        reason=reason,
        message=message,
        last_transition_time=stamp(now)
        if moved or not old.get("lastTransitionTime")
        else old["lastTransitionTime"],
        observed_generation=generation,
    ).model_dump(by_alias=True)


def rebalancing(
    subject: Subject, seen: policy.Observation, now: datetime.datetime
) -> tuple[dict[str, Any] | None, bool]:
    """Rebalancing, from what the storage nodes report: True while images sit on shards that
    no longer own them (after `spec.shards` grew), with the count; False once none do.
    Returns the condition when it should be written, and whether it started or ended (an
    Event then, not at every count)."""
    remaining = seen.rebalance_remaining
    old = subject.condition("Rebalancing")
    was_moving = old.get("status") == "True"
    if remaining is None or (remaining <= 0 and not was_moving):
        return None, False  # not reported, or nothing to move and nothing said
    moving = remaining > 0
    message = (
        f"{remaining:.0f} images (counted per replica) are moving to the shards that now own them"
        if moving
        else "every image is on a shard that owns it"
    )
    if moving and was_moving and old.get("message") == message:
        return None, False
    condition = Condition(
        type="Rebalancing",
        status="True" if moving else "False",
        reason="MovingImages" if moving else "Balanced",
        message=message,
        last_transition_time=str(old["lastTransitionTime"]) if moving and was_moving else stamp(now),
        observed_generation=subject.generation,
    ).model_dump(by_alias=True)
    return condition, moving != was_moving


def rebalancing_event(
    subject: Subject, seen: policy.Observation, now: datetime.datetime
) -> tuple[Effect, ...]:
    condition, started_or_ended = rebalancing(subject, seen, now)
    if condition is None or not started_or_ended:
        return ()
    return (PostEvent("Normal", condition["reason"], condition["message"]),)


def _record(
    action: policy.Action, incident: str, now: datetime.datetime, *, done: bool
) -> incidents.Recorded:
    return incidents.Recorded(action.kind, action.target, now, incident, action.reason, done=done)


def _act(
    subject: Subject,
    incident: str,
    action: policy.Action,
    now: datetime.datetime,
    *,
    drained: frozenset[str],
    written: Mapping[str, Any],
) -> tuple[list[Effect], frozenset[str], Mapping[str, Any]]:
    """The write-ahead record; the action with its record marked done; who was told; the
    record marked told. `drained` and `written` (the SLO loop's status slice) are as they stand
    before this action (an earlier one of the same verdict may have changed them); returned
    as they are after."""
    pending = _record(action, incident, now, done=False)
    done = dataclasses.replace(pending, done=True, told=False)
    taken, after, status = _carry_out(subject, done, drained, written, now)
    headline = f"{KINDS[action.kind].past} {action.target}"
    return (
        [
            Record({incidents.LAST_ACTION_ANNOTATION: pending.annotation()}),
            taken,
            *_tell(subject, {}, incident, action, headline=headline, now=now),
            _mark_told(done),
        ],
        after,
        status,
    )


def _mark_told(record: incidents.Recorded) -> Effect:
    told = dataclasses.replace(record, told=True).annotation()
    return MarkTold({incidents.LAST_ACTION_ANNOTATION: told}, expected=record.annotation())


def _carry_out(
    subject: Subject,
    record: incidents.Recorded,
    drained: frozenset[str],
    written: Mapping[str, Any],
    now: datetime.datetime,
) -> tuple[Effect, frozenset[str], Mapping[str, Any]]:
    done = {incidents.LAST_ACTION_ANNOTATION: record.annotation()}
    if record.kind == "rollback":
        aborted = rollouts.rolled_back(
            rollouts.of(written.get("rollout")), subject.spec, record.target, f"rolled back: {record.reason}"
        )
        status = {**written, "rollout": _dump_rollout(aborted)}
        condition = _rollout_condition(subject, aborted, now)
        if condition is not None:
            status["conditions"] = _with(list(written.get("conditions") or []), [condition])
        reason: dict[str, str | None] = {ROLLBACK_REASON_ANNOTATION: record.reason}
        return RollBack(record.target, status, {**done, **reason}), drained, status
    after = drained | {record.target} if record.kind == "drain" else drained - {record.target}
    annotations = {**done, DRAINED_ANNOTATION: ",".join(sorted(after)) or None}
    return Drain(record.target, after, annotations), after, written


def _tell_late(
    subject: Subject, seen: policy.Observation, record: incidents.Recorded, now: datetime.datetime
) -> tuple[Effect, ...]:
    """An action taken whose telling was cut short (the operator stopped in between)."""
    action = policy.Action(record.kind, record.reason, record.target)  # type: ignore[arg-type]
    headline = f"{KINDS[action.kind].past} {record.target} (told after an operator restart)"
    return (*_tell(subject, seen, record.incident, action, headline=headline, now=now), _mark_told(record))


def _tell(
    subject: Subject,
    seen: policy.Observation | Mapping[str, Any],
    incident: str,
    action: policy.Action,
    *,
    headline: str,
    now: datetime.datetime,
    text: str = "",
    reason: str = "",
    dry_run: bool = False,
    resolution: bool = True,
) -> list[Effect]:
    """An Event, a Slack message and a Postmortem timeline entry for one step (the message
    before the entry: a page must not wait on the Postmortem)."""
    kind = KINDS[action.kind]
    text = text or f"{headline}: {action.reason}"
    scope: Mapping[str, float] = {}
    if isinstance(seen, policy.Observation):
        scope = seen.by_datacenter.get(action.target) or seen.by_revision.get(action.target) or seen.service
    effects: list[Effect] = [
        PostEvent(kind.event_type, reason or kind.reason, text),
        Notify(
            IncidentMessage(
                incident or f"{subject.name}-notice",
                "action",
                subject.where,
                headline,
                reason=action.reason,
                action=f"{action.kind} {action.target}".strip(),
                datacenter=action.target if action.kind in ("drain", "undrain") else "",
                revision=action.target if action.kind == "rollback" else subject.running,
                burn=dict(scope),
                runbook=kind.runbook,
                postmortem=incident,
                dry_run=dry_run,
            )
        ),
    ]
    if incident:
        effects.append(
            AppendTimeline(
                incident,
                TimelineEntry(time=stamp(now), event=text[:2000], actor="operator"),
                f"{text} (automated, {stamp(now)})"
                if kind.changes_world and resolution and not dry_run
                else "",
            )
        )
    return effects


def _told(
    subject: Subject, seen: policy.Observation, incident: str, action: policy.Action, now: datetime.datetime
) -> list[Effect]:
    """A page, or what dryRun (or the pause) would have done: people are told, once."""
    if action.kind == "page":
        return _tell(subject, seen, incident, action, headline="Paging", now=now, text=action.reason)
    return _tell(
        subject,
        seen,
        incident,
        action,
        headline=f"dry run: would {action.kind} {action.target}",
        now=now,
        reason=f"Would{action.kind.capitalize()}",
        dry_run=True,
    )


def _open(
    subject: Subject,
    seen: policy.Observation,
    name: str,
    decision: policy.Decision,
    now: datetime.datetime,
    *,
    exceptions: Sequence[str] = (),
    within: str = "",
) -> list[Effect]:
    at = stamp(now)
    excepted = [
        TimelineEntry(
            time=line.split(" ", 1)[0], event=f"release exception: {line.split(' ', 1)[-1]}", actor="human"
        )
        for line in exceptions
    ]
    postmortem = PostmortemSpec(
        image_server=subject.name,
        title=f"{subject.name} burned its error budget ({decision.summary})"[:200],
        started_at=at,
        summary=f"{subject.name} burned its error budget: {decision.summary}.",
        trigger=f"revision {subject.running} was running; the timeline shows what the operator saw.",
        revision=subject.running,
        datacenter=next((a.target for a in decision.actions if a.kind == "drain"), ""),
        detection=Detection(
            alert="imageserver-operator SLO evaluation",
            detected_at=at,
            burn_rates=[BurnRate(window=w, burn_rate=round(v, 2)) for w, v in list(seen.service.items())[:8]],
        ),
        timeline=[
            *excepted,
            TimelineEntry(time=at, event=f"incident opened: {decision.summary}", actor="operator"),
        ],
        links=Links(runbooks=[KINDS["page"].runbook]),
    )
    return [
        OpenPostmortem(name, postmortem),
        Annotate({incidents.INCIDENT_ANNOTATION: name}),
        PostEvent("Warning", "IncidentOpened", f"incident {name} opened: {decision.summary}"),
        Notify(
            IncidentMessage(
                name,
                "opened",
                subject.where,
                f"{subject.name} is burning its error budget",
                reason=decision.summary,
                revision=subject.running,
                burn=dict(seen.service),
                runbook=KINDS["page"].runbook,
                postmortem=name,
                within=within,
                broadcast=bool(within),
            )
        ),
    ]


def _resolve(subject: Subject, incident: str, tally: Tally | None, now: datetime.datetime) -> list[Effect]:
    slo = subject.spec.slo
    short = durations.parse(ranges(slo.window)[SHORT])
    impact = incidents.impact(
        tally or Tally(), budget(slo.availability.objective), policy.duration(slo.window), short
    )
    return [
        ResolvePostmortem(incident, now, impact, subject.spec.budget_policy.postmortem_p0_above_percent),
        Annotate({incidents.INCIDENT_ANNOTATION: None}),
        PostEvent("Normal", "IncidentResolved", f"incident {incident} resolved: burn back under budget"),
        Notify(
            IncidentMessage(
                incident,
                "resolved",
                subject.where,
                "Resolved: burn back under budget",
                reason=f"about {impact.failed_requests_estimate} requests failed",
                budget_spent_percent=impact.error_budget_consumed_percent,
                postmortem=incident,
            )
        ),
    ]


def _unknown_notice(subject: Subject, decision: policy.Decision) -> list[Effect]:
    return [
        PostEvent("Warning", "SLOUnknown", f"no automatic action: {decision.summary}"),
        Notify(
            IncidentMessage(
                f"{subject.name}-unknown",
                "unknown",
                subject.where,
                "SLO cannot be judged: no automatic action",
                reason=decision.summary,
                runbook=KINDS["notify_unknown"].runbook,
            )
        ),
    ]


# -- an action a crash interrupted ------------------------------------------------------------


def _resume(
    subject: Subject,
    seen: policy.Observation,
    state: policy.State,
    record: incidents.Recorded,
    now: datetime.datetime,
) -> tuple[Effect, ...]:
    """An action recorded and not taken (the operator stopped in between), judged again
    before it is completed: the brakes and the world may have changed since."""
    if subject.paused:
        return ()  # the pause stops everything; the record waits for it to be lifted
    kind = record.kind
    action = policy.Action(kind, record.reason, record.target)  # type: ignore[arg-type]
    done = dataclasses.replace(record, done=True, told=False)
    if _already(subject, record):
        return (Annotate({incidents.LAST_ACTION_ANNOTATION: done.annotation()}),)  # told next cycle
    why_not = _no_longer(subject, seen, state, record, now)
    if why_not is None:
        return ()  # no data to judge it on: it waits (and is dropped once too old)
    if why_not:
        dropped = dataclasses.replace(done, dropped=why_not, told=True)
        text = f"dropped the interrupted {kind} {record.target}: {why_not}"
        return (
            Annotate({incidents.LAST_ACTION_ANNOTATION: dropped.annotation()}),
            *_tell(
                subject,
                seen,
                record.incident,
                action,
                headline=f"Dropped {kind} {record.target}",
                now=now,
                text=text,
                reason="ActionDropped",
                resolution=False,
            ),
        )
    headline = f"{KINDS[action.kind].past} {record.target}, completed after an operator restart"
    taken, _, _ = _carry_out(subject, done, subject.drained, owned(subject.status), now)
    return (
        taken,
        *_tell(subject, seen, record.incident, action, headline=headline, now=now),
        _mark_told(done),
    )


def _already(subject: Subject, record: incidents.Recorded) -> bool:
    """The world already is what the action would make it (it was taken, not yet marked)."""
    if record.kind == "rollback":
        served = rollouts.serving(subject.spec, subject.rollout)
        return bool(served) and all(revision == record.target for revision in served.values())
    if record.kind == "drain":
        return record.target in subject.drained
    return record.target not in subject.drained


def _no_longer(
    subject: Subject,
    seen: policy.Observation,
    state: policy.State,
    record: incidents.Recorded,
    now: datetime.datetime,
) -> str | None:
    """Why the interrupted action should not be completed now; empty when it still should;
    None when there is no data to judge it on."""
    mode = subject.spec.remediation.mode
    if mode != "auto":
        return f"remediation mode is {mode}"
    age = now - record.at
    if age > RESUME_WITHIN or age < -RESUME_WITHIN:
        minutes = int(age.total_seconds() // 60)
        return f"it was recorded {minutes} min ago, too long ago to act on without judging again"
    names = [dc.name for dc in subject.spec.datacenters]
    if record.kind == "rollback":
        held = subject.rollout or rollouts.seeded(subject.spec, subject.status.get("revisions") or {}, now)
        if held.target != subject.spec.version or held.stable != record.target:
            return f"the spec has moved on: it asks for {subject.spec.version}"
    elif record.target not in names:
        return f"{record.target} is no longer one of the datacenters ({', '.join(names)})"
    elif record.kind == "drain":
        after = subject.drained | {record.target}
        if not set(names) - after:
            return f"{record.target} is the last datacenter still serving traffic"
        if len(after) > subject.spec.remediation.drain.max_drained:
            limit = subject.spec.remediation.drain.max_drained
            return f"{len(after)} datacenters would be drained (at most {limit})"
    if not seen.reachable or not seen.service:
        return None
    if (record.kind, record.target) not in {(a.kind, a.target) for a in policy.planned(seen, state, now)}:
        return "the policy, judging what Prometheus says now, no longer calls for it"
    return ""


# -- progressive delivery --------------------------------------------------------------------


def _dump_rollout(state: RolloutStatus) -> dict[str, Any]:
    return state.model_dump(by_alias=True, mode="json")


def _rollout_condition(
    subject: Subject, state: RolloutStatus, now: datetime.datetime
) -> dict[str, Any] | None:
    """Rollout: True while a version is on its way (Progressing, Paused), False once it is
    settled (Complete, Aborted), with the numbers of the last verdict."""
    waves = len(rollouts.waves(subject.spec))
    if state.phase == "Complete":
        status, reason, message = "False", "Complete", f"{state.target} runs in every datacenter"
    elif state.phase == "Aborted":
        status, reason = "False", "Aborted"
        message = f"{state.target} aborted, every datacenter runs {state.stable}: {state.verdict}"
    else:
        status, reason = "True", state.phase
        where = f"{state.promoted} of {waves} waves, the rest on {state.stable}"
        message = f"{state.target} in {where}: {state.verdict}"
    return _condition(
        subject.status,
        "Rollout",
        status,
        reason,
        message[:1000],
        generation=subject.generation,
        now=now,
    )


def commanded(subject: Subject, after: RolloutStatus, now: datetime.datetime) -> dict[str, Any]:
    """The SLO loop's status slice with a rollout a person moved (the CLI): the same field,
    under the same field manager, as the loop's own steps."""
    status = {**owned(subject.status), "rollout": _dump_rollout(after)}
    condition = _rollout_condition(subject, after, now)
    if condition is not None:
        status["conditions"] = _with(list(status["conditions"]), [condition])
    return status


def _rollout_notes(subject: Subject, moved: rollouts.Step) -> list[Effect]:
    """An Event for each step of a rollout, and a message in the rollout's Slack thread: its
    start, each promotion with the verdict's numbers, its end; a pause or an exception (on-call
    must act) is also shown in the channel. A failed wave is an incident, opened in the same
    thread: its rollback is told there and in its Postmortem, with the verdict's numbers. A
    version that goes everywhere at once (no waves to judge) is said in Events only."""
    effects: list[Effect] = []
    waved = subject.spec.remediation.mode == "auto" and len(rollouts.waves(subject.spec)) > 1
    for note in moved.notes:
        effects.append(PostEvent("Warning" if note.warning else "Normal", note.reason, note.message))
        if not (note.page or waved):
            continue
        effects.append(
            Notify(
                IncidentMessage(
                    rollout_thread(subject.name, moved.rollout.target),
                    "rollout",
                    subject.where,
                    note.message,
                    revision=moved.rollout.target,
                    runbook=ROLLOUT_RUNBOOK,
                    broadcast=note.page,
                    rollout=True,
                )
            )
        )
    return effects


# -- the error budget policy -----------------------------------------------------------------


def _frozen(subject: Subject, seen: policy.Observation) -> str:
    """Why new versions are frozen now (spec.budgetPolicy), empty when they are not. Without
    data the freeze stays as it was: no decision is drawn from missing data."""
    rule = subject.spec.budget_policy
    was = subject.condition(RELEASES_FROZEN)
    if not rule.freeze:
        return ""
    if seen.budget_spent is None:
        return str(was.get("message") or "") if was.get("status") == "True" else ""
    left = (1 - seen.budget_spent) * 100
    if left >= rule.freeze_below_percent:
        return ""
    window = subject.spec.slo.window
    floor = f"{rule.freeze_below_percent:g}%"
    return f"{left:.0f}% of the {window} error budget left, below the {floor} of spec.budgetPolicy"


def _freeze_condition(
    subject: Subject, seen: policy.Observation, now: datetime.datetime
) -> dict[str, Any] | None:
    why = _frozen(subject, seen)
    if why:
        return _condition(
            subject.status,
            RELEASES_FROZEN,
            "True",
            "BudgetSpent",
            why,
            generation=subject.generation,
            now=now,
        )
    if not subject.spec.budget_policy.freeze and not subject.condition(RELEASES_FROZEN):
        return None  # no policy, never frozen: nothing to say
    reason = "WithinBudget" if subject.spec.budget_policy.freeze else "NoFreezePolicy"
    message = "new versions are rolled out" + (
        "" if subject.spec.budget_policy.freeze else ": no freeze policy"
    )
    return _condition(
        subject.status, RELEASES_FROZEN, "False", reason, message, generation=subject.generation, now=now
    )


def _freeze_notes(subject: Subject, seen: policy.Observation) -> list[Effect]:
    """An Event and a Slack message when releases freeze, and when the freeze is lifted."""
    was = subject.condition(RELEASES_FROZEN).get("status") == "True"
    why = _frozen(subject, seen)
    if bool(why) == was:
        return []
    if why:
        text = f"releases frozen: {why}; a new spec.version is refused until the budget recovers"
        reason, kind = "ReleasesFrozen", "Warning"
    else:
        text = "releases unfrozen: the error budget has recovered"
        reason, kind = "ReleasesUnfrozen", "Normal"
    return [
        PostEvent(kind, reason, text),  # type: ignore[arg-type]
        Notify(
            IncidentMessage(f"{subject.name}-budget", "rollout", subject.where, text, runbook=ROLLOUT_RUNBOOK)
        ),
    ]
