"""The SLO loop: every cycle, burn for all ImageServers (two Prometheus queries), a decision
per ImageServer (policy.py), and its execution: rollback, drain, undrain, pages, with an
Event, a Slack message in the incident's thread and a Postmortem timeline entry each.

An action is recorded on the ImageServer *before* it is taken and marked done after: a crash
in between leaves a record that the next cycle (of this or another operator) completes,
instead of deciding again, and the record feeds the policy's cooldown. So a crash can
neither lose an action nor make a second one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from pydantic import ValidationError

from imageserver_operator import drain, failpoints, incidents, policy
from imageserver_operator.annotations import drained_of
from imageserver_operator.evaluation import Budgets, Key
from imageserver_operator.kube import Kube
from imageserver_operator.messages import IncidentMessage
from imageserver_operator.metrics import OperatorMetrics
from imageserver_operator.models import GROUP, ImageServerSpec
from imageserver_operator.slo import budget
from imageserver_operator.store import Store, status_of

log = logging.getLogger(__name__)
Clock = Callable[[], datetime.datetime]
Observe = Callable[[Mapping[Key, Budgets]], Mapping[Key, policy.Observation]]
ROLLBACK_REASON_ANNOTATION = f"{GROUP}/rollback-reason"
RUNBOOKS = {
    "rollback": "runbooks/rollback.md",
    "drain": "runbooks/drain.md",
    "undrain": "runbooks/undrain.md",
    "page": "runbooks/slo-burn-page.md",
    "notify_unknown": "runbooks/slo-unknown.md",
}
PAST = {"rollback": "Rolled back", "drain": "Drained", "undrain": "Undrained"}
REASONS = {"rollback": "RolledBack", "drain": "Drained", "undrain": "Undrained"}  # Event reasons


def _parse_time(text: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


class Remediator:
    def __init__(
        self,
        store: Store,
        kube: Kube,
        observe: Observe,
        *,
        is_leader: Callable[[], bool],
        notify: Callable[[IncidentMessage], None] = lambda _message: None,
        interval_seconds: float = 15.0,
        clock: Clock = lambda: datetime.datetime.now(datetime.UTC),
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self.metrics = metrics or OperatorMetrics()
        self.store = store
        self.kube = kube
        self.observe = observe
        self.is_leader = is_leader
        self.notify = notify
        self.interval_seconds = interval_seconds
        self.clock = clock
        self._healthy_since: dict[tuple[Key, str], datetime.datetime] = {}
        self._fine_since: dict[Key, datetime.datetime] = {}  # users fine continuously since
        self._unknown_since: dict[Key, datetime.datetime] = {}
        self._last_decided: dict[Key, tuple[tuple[str, str, bool], ...]] = {}
        # Each ImageServer's revisions' last burn while current: the previous one's baseline.
        self._as_current: dict[Key, dict[str, dict[str, float]]] = {}
        self._tally: dict[str, incidents.Tally] = {}  # open incident → its cost so far
        self._last_cycle: dict[Key, datetime.datetime] = {}
        self._reported: set[tuple[str, str, str]] = set()  # (incident, kind, target) told once

    async def run(self) -> None:
        while True:
            try:
                if self.is_leader():
                    await self.cycle()
                    self.metrics.slo_cycles.labels(result="ok").inc()
            except Exception:
                self.metrics.slo_cycles.labels(result="error").inc()
                log.exception("SLO cycle failed")
            await asyncio.sleep(self.interval_seconds)

    async def cycle(self) -> None:
        specs: dict[Key, tuple[dict[str, Any], ImageServerSpec]] = {}
        for key in self.store.names():
            body = self.store.get(key)
            if body is None:
                continue
            try:
                specs[key] = (body, ImageServerSpec.model_validate(body.get("spec", {})))
            except ValidationError:
                continue  # Degraded already says why; nothing to judge
        budgets = {
            k: Budgets(budget(s.slo.availability.objective), budget(s.slo.latency.objective))
            for k, (_, s) in specs.items()
        }
        if not budgets:
            return
        observed = await asyncio.to_thread(self.observe, budgets)
        self.metrics.burn.clear()  # only what this cycle saw: revisions come and go
        for key, (body, spec) in specs.items():
            await self.handle(key, body, spec, observed.get(key, policy.Observation(False)))

    def _state(
        self, key: Key, body: dict[str, Any], spec: ImageServerSpec, seen: policy.Observation
    ) -> policy.State:
        annotations = dict(body["metadata"].get("annotations") or {})
        drained = drained_of(body)
        now = self.clock()
        datacenters = []
        for dc in spec.datacenters:
            if policy.recovered(seen.by_datacenter.get(dc.name, {})):
                self._healthy_since.setdefault((key, dc.name), now)
            else:
                self._healthy_since.pop((key, dc.name), None)
            datacenters.append(
                policy.Datacenter(
                    dc.name, dc.frontend_replicas, dc.name in drained, self._healthy_since.get((key, dc.name))
                )
            )
        status = status_of(body)
        revisions = status.get("revisions", {}) or {}
        progressing = any(
            c.get("type") == "Progressing" and c.get("status") == "True" for c in status.get("conditions", [])
        )
        current, previous = revisions.get("current") or spec.version, revisions.get("previous", "")
        remembered = self._as_current.setdefault(key, {})
        baseline = remembered.get(previous) if previous else None
        if seen.by_revision.get(current):
            self._as_current[key] = {current: dict(seen.by_revision[current])} | (
                {previous: baseline} if previous and baseline is not None else {}
            )
        base = policy.State(
            remediation=spec.remediation,
            datacenters=tuple(datacenters),
            current_revision=current,
            previous_revision=previous,
            previous_baseline=baseline,
            current_since=_parse_time(revisions.get("since", "")),
            unknown_since=self._unknown_since.get(key),
            rolling_out=progressing,
        )
        return incidents.state_with_history(base, annotations)

    async def handle(
        self, key: Key, body: dict[str, Any], spec: ImageServerSpec, seen: policy.Observation
    ) -> None:
        if spec.remediation.mode == "off":
            return
        started = time.monotonic()
        case = Case(body, spec, seen, self.clock())
        self.metrics.saw(case.namespace, case.name, seen)
        pending = incidents.interrupted(case.annotations)
        if pending is not None:
            await self._complete(case, pending)
            return
        state = self._state(key, body, spec, seen)
        decision = policy.decide(seen, state, case.now)
        decided = tuple((a.kind, a.target, a.execute) for a in decision.actions)
        if decided and decided != self._last_decided.get(key):  # a log line per change, not per cycle
            log.info(
                "%s: %s; %s",
                case.where,
                decision.summary,
                "; ".join(f"{a.kind} {a.target} (execute={a.execute}): {a.reason}" for a in decision.actions),
            )
        self._last_decided[key] = decided
        if decision.slo_healthy == "Unknown":
            self._unknown_since.setdefault(key, case.now)
        else:
            self._unknown_since.pop(key, None)
        for action in decision.actions:
            self.metrics.decided(action)
        open_incident = case.annotations.get(incidents.INCIDENT_ANNOTATION, "")
        if decision.recovered:
            self._fine_since.setdefault(key, case.now)
        else:
            self._fine_since.pop(key, None)
        fine_for = case.now - self._fine_since.get(key, case.now)
        step = incidents.step(decision, open_incident, fine_for, case.name, case.now)
        self._count(key, case, step.incident)
        if step.open_incident:
            await self._open(case, step.open_incident, decision)
        for action in step.actions:
            await self._act(case, step.incident, action)
        if step.resolve:
            await self._resolve(case, step.incident)
        await self._unknown(case, decision, step)
        await self._status(case, decision)
        self.metrics.decision_seconds.observe(time.monotonic() - started)

    def _count(self, key: Key, case: Case, incident: str) -> None:
        """Add this cycle's failed requests to the open incident's tally (for its impact)."""
        previous = self._last_cycle.get(key)
        self._last_cycle[key] = case.now
        if not incident or not case.seen.reachable:
            return
        # A long gap (leadership moved, Prometheus was away) is not counted as this cycle's.
        seconds = self.interval_seconds
        if previous is not None:
            seconds = min((case.now - previous).total_seconds(), 4 * self.interval_seconds)
        self._tally[incident] = self._tally.get(incident, incidents.Tally()).add(case.seen, seconds)

    async def _open(self, case: Case, name: str, decision: policy.Decision) -> None:
        burn_rates = [{"window": w, "burnRate": round(v, 2)} for w, v in case.seen.service.items()]
        postmortem = {
            "imageServer": case.name,
            "title": f"{case.name} burned its error budget ({decision.summary})",
            "startedAt": case.stamp,
            "summary": f"{case.name} burned its error budget: {decision.summary}.",
            "trigger": f"revision {case.spec.version} was running; the timeline shows what the operator saw.",
            "detection": {
                "alert": "imageserver-operator SLO evaluation",
                "detectedAt": case.stamp,
                "burnRates": burn_rates,
            },
            "timeline": [
                {"time": case.stamp, "event": f"incident opened: {decision.summary}", "actor": "operator"}
            ],
            "links": {"runbooks": ["runbooks/slo-burn-page.md"]},
        }
        await asyncio.to_thread(self.kube.create_postmortem, case.namespace, name, postmortem)
        await asyncio.to_thread(
            self.kube.annotate, case.namespace, case.name, {incidents.INCIDENT_ANNOTATION: name}
        )
        await asyncio.to_thread(
            self.kube.event,
            case.body,
            "Warning",
            "IncidentOpened",
            f"incident {name} opened: {decision.summary}",
        )
        self.notify(
            IncidentMessage(
                name,
                "opened",
                case.where,
                f"{case.name} is burning its error budget",
                reason=decision.summary,
                revision=case.spec.version,
                burn=dict(case.seen.service),
                runbook=RUNBOOKS["page"],
                postmortem=name,
            )
        )

    async def _act(self, case: Case, incident: str, action: policy.Action) -> None:
        if action.kind == "page" or not action.execute:
            once = (incident, action.kind, action.target)
            if once in self._reported:
                return
            self._reported.add(once)
            if action.kind == "page":
                await self._tell(case, incident, action, reason="Paging", text=action.reason)
            else:
                await self._tell(
                    case,
                    incident,
                    action,
                    reason=f"Would{action.kind.capitalize()}",
                    text=f"dry run: would {action.kind} {action.target}: {action.reason}",
                    dry_run=True,
                )
            return
        record = incidents.Recorded(action.kind, action.target, case.now, incident, action.reason, done=False)
        await self._record(case, record)  # before acting: see the module's docstring
        failpoints.reach(failpoints.AFTER_RECORD)
        await self._execute(case, record)
        await self._tell(
            case,
            incident,
            action,
            reason=REASONS[action.kind],
            text=f"{PAST[action.kind]} {action.target}: {action.reason}",
        )

    async def _complete(self, case: Case, record: incidents.Recorded) -> None:
        """An action recorded but interrupted (the operator crashed): take it now, once."""
        log.warning("completing %s %s, recorded at %s and interrupted", record.kind, record.target, record.at)
        await self._execute(case, record)
        action = policy.Action(cast("policy.ActionKind", record.kind), record.reason, record.target)
        await self._tell(
            case,
            record.incident,
            action,
            reason=REASONS[record.kind],
            text=f"{PAST[record.kind]} {record.target}, completed after an operator restart: {record.reason}",
        )

    async def _record(self, case: Case, record: incidents.Recorded) -> None:
        await asyncio.to_thread(
            self.kube.annotate,
            case.namespace,
            case.name,
            {incidents.LAST_ACTION_ANNOTATION: record.annotation()},
        )

    async def _execute(self, case: Case, record: incidents.Recorded) -> None:
        """Take a recorded action (idempotent: safe to repeat after a crash), then mark it done."""
        if record.kind == "rollback":
            await asyncio.to_thread(
                self.kube.set_version,
                case.namespace,
                case.name,
                record.target,
                {ROLLBACK_REASON_ANNOTATION: record.reason},
            )
        else:
            await asyncio.to_thread(
                drain.set_drained,
                self.kube,
                case.namespace,
                case.name,
                record.target,
                drain=record.kind == "drain",
                reason=record.reason,
                announce=False,  # _tell() posts the Event, with the Slack message and timeline
            )
        await self._record(case, dataclasses.replace(record, done=True))

    async def _tell(
        self,
        case: Case,
        incident: str,
        action: policy.Action,
        *,
        reason: str,
        text: str,
        dry_run: bool = False,
    ) -> None:
        """An Event, a Postmortem timeline entry and a Slack message for one step."""
        type_ = "Normal" if action.kind == "undrain" else "Warning"
        await asyncio.to_thread(self.kube.event, case.body, type_, reason, text)
        if incident:
            await asyncio.to_thread(
                self.kube.append_timeline,
                case.namespace,
                incident,
                {"time": case.stamp, "event": text, "actor": "operator"},
                f"{text} (automated, {case.stamp})" if action.kind in PAST and not dry_run else "",
            )
        seen = case.seen
        scope = seen.by_datacenter.get(action.target) or seen.by_revision.get(action.target) or seen.service
        self.notify(
            IncidentMessage(
                incident or f"{case.name}-notice",
                "action",
                case.where,
                text.split(":", 1)[0],
                reason=action.reason,
                action=f"{action.kind} {action.target}".strip(),
                datacenter=action.target if action.kind in ("drain", "undrain") else "",
                revision=action.target if action.kind == "rollback" else case.spec.version,
                burn=dict(scope),
                runbook=RUNBOOKS[action.kind],
                postmortem=incident,
                dry_run=dry_run,
            )
        )

    async def _resolve(self, case: Case, incident: str) -> None:
        tally = self._tally.pop(incident, incidents.Tally())
        impact = tally.impact(
            budget(case.spec.slo.availability.objective), policy.duration(case.spec.slo.window)
        )
        await asyncio.to_thread(self.kube.resolve_postmortem, case.namespace, incident, case.stamp, impact)
        await asyncio.to_thread(
            self.kube.annotate, case.namespace, case.name, {incidents.INCIDENT_ANNOTATION: None}
        )
        await asyncio.to_thread(
            self.kube.event,
            case.body,
            "Normal",
            "IncidentResolved",
            f"incident {incident} resolved: burn back under budget",
        )
        self.notify(
            IncidentMessage(
                incident,
                "resolved",
                case.where,
                "Resolved: burn back under budget",
                reason=f"about {impact['failedRequestsEstimate']:.0f} requests failed",
                budget_spent_percent=impact["errorBudgetConsumedPercent"],
                postmortem=incident,
            )
        )

    async def _unknown(self, case: Case, decision: policy.Decision, step: incidents.Step) -> None:
        told = case.annotations.get(incidents.UNKNOWN_ANNOTATION) == "true"
        if step.notify_unknown and not told:
            await asyncio.to_thread(
                self.kube.annotate, case.namespace, case.name, {incidents.UNKNOWN_ANNOTATION: "true"}
            )
            await asyncio.to_thread(
                self.kube.event,
                case.body,
                "Warning",
                "SLOUnknown",
                f"no automatic action: {decision.summary}",
            )
            self.notify(
                IncidentMessage(
                    f"{case.name}-unknown",
                    "unknown",
                    case.where,
                    "SLO cannot be judged: no automatic action",
                    reason=decision.summary,
                    runbook=RUNBOOKS["notify_unknown"],
                )
            )
        elif told and decision.slo_healthy != "Unknown":
            await asyncio.to_thread(
                self.kube.annotate, case.namespace, case.name, {incidents.UNKNOWN_ANNOTATION: None}
            )

    async def _status(self, case: Case, decision: policy.Decision) -> None:
        """SLOHealthy and errorBudgetRemaining, written only when they change."""
        status = status_of(case.body)
        patch: dict[str, Any] = {}
        if case.seen.budget_spent is not None:
            remaining = f"{(1 - case.seen.budget_spent) * 100:.0f}%"  # whole percent: few writes
            if status.get("errorBudgetRemaining") != remaining:
                patch["errorBudgetRemaining"] = remaining
        rebalancing, started_or_ended = self._rebalancing(case)
        changed = [c for c in (self._slo_condition(case, decision), rebalancing) if c is not None]
        if changed:
            types = {c["type"] for c in changed}
            conditions = [c for c in status.get("conditions", []) if c["type"] not in types]
            patch["conditions"] = [*conditions, *changed]
        strays = case.seen.rebalance_remaining
        if strays is not None and status.get("rebalanceRemaining") != round(strays):
            patch["rebalanceRemaining"] = round(strays)
        if patch:
            # Onto the version it was judged from: the next cycle judges again on a conflict.
            written = await asyncio.to_thread(
                self.kube.patch_status,
                case.namespace,
                case.name,
                patch,
                case.body["metadata"].get("resourceVersion"),
            )
            if not written:
                return
        if rebalancing is not None and started_or_ended:
            await asyncio.to_thread(
                self.kube.event, case.body, "Normal", rebalancing["reason"], rebalancing["message"]
            )

    @staticmethod
    def _rebalancing(case: Case) -> tuple[dict[str, Any] | None, bool]:
        """Rebalancing, from what the storage nodes report: True while images sit on shards
        that no longer own them (after `spec.shards` grew), with the count; False once none
        do. Returns the condition when it should be written, and whether it started or ended
        (an Event then, not at every count)."""
        remaining = case.seen.rebalance_remaining
        conditions = status_of(case.body).get("conditions", [])
        old: dict[str, Any] = next((c for c in conditions if c["type"] == "Rebalancing"), {})
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
        condition = {
            "type": "Rebalancing",
            "status": "True" if moving else "False",
            "reason": "MovingImages" if moving else "Balanced",
            "message": message,
            "lastTransitionTime": old["lastTransitionTime"] if moving and was_moving else case.stamp,
            "observedGeneration": case.body["metadata"].get("generation", 0),
        }
        return condition, moving != was_moving

    @staticmethod
    def _slo_condition(case: Case, decision: policy.Decision) -> dict[str, Any] | None:
        conditions = list(status_of(case.body).get("conditions", []))
        old: dict[str, Any] = next((c for c in conditions if c["type"] == "SLOHealthy"), {})
        reason = {"True": "WithinBudget", "False": "BurningBudget", "Unknown": "CannotJudge"}[
            decision.slo_healthy
        ]
        if old.get("status") == decision.slo_healthy and old.get("reason") == reason:
            return None
        return {
            "type": "SLOHealthy",
            "status": decision.slo_healthy,
            "reason": reason,
            "message": decision.summary,
            "lastTransitionTime": case.stamp,
            "observedGeneration": case.body["metadata"].get("generation", 0),
        }


@dataclass(frozen=True)
class Case:
    """One ImageServer in one cycle."""

    body: dict[str, Any]
    spec: ImageServerSpec
    seen: policy.Observation
    now: datetime.datetime

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def stamp(self) -> str:
        return self.now.strftime("%Y-%m-%dT%H:%M:%SZ")

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.body["metadata"].get("annotations") or {})
