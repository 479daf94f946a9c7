"""The SLO loop: every cycle, burn for all ImageServers (two Prometheus queries), then for
each ImageServer the engine's verdict (engine.py, pure) and the execution of its effects.

This module decides nothing: it reads, calls the engine, and carries out what it returns.
Each ImageServer is judged and acted on in isolation: an error in one becomes a condition
and an Event on that one, and the cycle goes on with the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from imageserver_operator.adapters import failpoints
from imageserver_operator.adapters.kube import SLO_FIELD_MANAGER, Kube
from imageserver_operator.adapters.metrics import OperatorMetrics
from imageserver_operator.adapters.store import Store
from imageserver_operator.core import engine, policy, postmortems
from imageserver_operator.core.evaluation import Budgets, Key
from imageserver_operator.core.messages import IncidentMessage
from imageserver_operator.core.slo import budget

log = logging.getLogger(__name__)
Clock = Callable[[], datetime.datetime]
Observe = Callable[[Mapping[Key, Budgets]], Mapping[Key, policy.Observation]]


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
        self._last_decided: dict[Key, tuple[tuple[str, str, bool], ...]] = {}  # a log line per change
        self._woken = asyncio.Event()

    def wake(self) -> None:
        """Judge everything now instead of at the next tick (a replica just became the leader)."""
        self._woken.set()

    async def run(self) -> None:
        while True:
            self._woken.clear()
            try:
                if self.is_leader():
                    await self.cycle()
                    self.metrics.slo_cycles.labels(result="ok").inc()
            except Exception:
                self.metrics.slo_cycles.labels(result="error").inc()
                log.exception("SLO cycle failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self.interval_seconds)

    async def cycle(self) -> None:
        subjects: dict[Key, tuple[dict[str, Any], engine.Subject]] = {}
        for key in self.store.names():
            body = self.store.get(key)
            if body is None or body["metadata"].get("deletionTimestamp"):
                continue
            try:
                subjects[key] = (body, engine.Subject.of(body))
            except (ValidationError, KeyError, TypeError, ValueError):
                continue  # Degraded already says why; nothing to judge
        budgets = {
            k: Budgets(budget(s.spec.slo.availability.objective), budget(s.spec.slo.latency.objective))
            for k, (_, s) in subjects.items()
        }
        if not budgets:
            return
        observed = await asyncio.to_thread(self.observe, budgets)
        self.metrics.burn.clear()  # only what this cycle saw: revisions come and go
        for key, (body, subject) in subjects.items():
            if not self.is_leader():
                return  # the lease is gone: whoever holds it now judges
            seen = observed.get(key, policy.Observation(False))
            try:
                await self.handle(key, body, subject, seen)
            except Exception as error:  # this ImageServer only: the others are still judged
                self.metrics.slo_cycles.labels(result="error").inc()
                log.exception("judging %s failed", subject.where)
                await self._failed(body, subject, error)

    async def handle(
        self, key: Key, body: dict[str, Any], subject: engine.Subject, seen: policy.Observation
    ) -> None:
        started = time.monotonic()
        now = self.clock()
        if subject.spec.remediation.mode != "off":
            self.metrics.saw(subject.namespace, subject.name, seen)
        verdict = engine.judge(subject, seen, now, interval_seconds=self.interval_seconds)
        decision = verdict.decision
        if decision is not None:
            decided = tuple((a.kind, a.target, a.execute) for a in decision.actions)
            if decided and decided != self._last_decided.get(key):
                log.info(
                    "%s: %s; %s",
                    subject.where,
                    decision.summary,
                    "; ".join(
                        f"{a.kind} {a.target} (execute={a.execute}): {a.reason}" for a in decision.actions
                    ),
                )
            self._last_decided[key] = decided
            for action in decision.actions:
                self.metrics.decided(action)
        await self.execute(body, verdict.effects)
        self.metrics.decision_seconds.observe(time.monotonic() - started)

    async def execute(self, body: dict[str, Any], effects: tuple[engine.Effect, ...]) -> bool:
        """Carry out effects in order. Writes go onto the version judged; when the API server
        refuses one (someone wrote since), the rest is not done: the next cycle judges again."""
        meta = body["metadata"]
        version: str | None = meta.get("resourceVersion")
        for effect in effects:
            if not self.is_leader():
                return False
            if isinstance(effect, engine.MarkTold):
                version, moved = await self._mark_told(
                    str(meta["namespace"]), str(meta["name"]), effect, version
                )
                if moved and version is not None:
                    # Marked onto a version someone else wrote since: what follows was judged
                    # on the old one, so it waits for the next cycle.
                    await self._refresh(body)
                    return False
            elif isinstance(effect, engine.WRITES_WITH_PRECONDITION):
                version = await self._write(str(meta["namespace"]), str(meta["name"]), effect, version)
            if isinstance(effect, engine.WRITES_WITH_PRECONDITION):
                if version is None:
                    log.info(
                        "%s/%s changed while it was judged; judged again next cycle",
                        meta["namespace"],
                        meta["name"],
                    )
                    await self._refresh(body)
                    return False
            else:
                await self._carry_out(body, effect)
        return True

    async def _refresh(self, judged: dict[str, Any]) -> None:
        """After a conflict, the object as it is now, if the watch has not brought it yet: a
        stalled watch must not stall remediation (a later watch event replaces it anyway)."""
        meta = judged["metadata"]
        key = (str(meta["namespace"]), str(meta["name"]))
        fresh = await asyncio.to_thread(self.kube.get_imageserver, *key)
        held = self.store.get(key)
        if held is not None and held["metadata"].get("resourceVersion") == meta.get("resourceVersion"):
            self.store.imageserver_event("MODIFIED", fresh)

    async def _write(
        self, namespace: str, name: str, effect: engine.Effect, version: str | None
    ) -> str | None:
        """One write onto `version`: the new version, or None when it is no longer current."""
        match effect:
            case engine.WriteStatus(owned):
                return await asyncio.to_thread(
                    self.kube.apply_status, namespace, name, dict(owned), SLO_FIELD_MANAGER, version
                )
            case engine.Record(annotations):
                written = await asyncio.to_thread(
                    self.kube.annotate, namespace, name, dict(annotations), version
                )
                if written is not None:
                    failpoints.reach(failpoints.AFTER_RECORD)
                return written
            case engine.Annotate(annotations) | engine.Drain(_, _, annotations):
                return await asyncio.to_thread(
                    self.kube.annotate, namespace, name, dict(annotations), version
                )
            case engine.RollBack(_, status, annotations):
                # The rollout aborted in status (the spec stays the user's), then its record
                # marked done: a crash in between leaves a record the next cycle finds taken.
                version = await asyncio.to_thread(
                    self.kube.apply_status, namespace, name, dict(status), SLO_FIELD_MANAGER, version
                )
                if version is None:
                    return None
                return await asyncio.to_thread(
                    self.kube.annotate, namespace, name, dict(annotations), version
                )
        raise TypeError(f"not a write: {effect!r}")

    async def _mark_told(
        self, namespace: str, name: str, effect: engine.MarkTold, version: str | None
    ) -> tuple[str | None, bool]:
        """The record marked told onto `version`; on a conflict, swapped in while the record
        is still the one told, whatever else was written since (True: onto a newer version).
        People were just told: a mark refused because the object was busy (the reconcile
        loop answering the action) would have them told again."""
        annotations = dict(effect.annotations)
        written = await asyncio.to_thread(self.kube.annotate, namespace, name, annotations, version)
        if written is not None:
            return written, False
        ((key, told),) = annotations.items()  # a told mark is the record's one annotation
        swapped = await asyncio.to_thread(
            self.kube.swap_annotation, namespace, name, key, effect.expected, str(told)
        )
        if swapped is None:
            log.info("%s/%s: the action record changed before it was marked told", namespace, name)
            return None, False  # another action, or already marked: judged again
        return swapped, True

    async def _carry_out(self, body: dict[str, Any], effect: engine.Effect) -> None:
        """An effect that changes no ImageServer: an Event, a message, the Postmortem."""
        namespace = str(body["metadata"]["namespace"])
        match effect:
            case engine.PostEvent(type_, reason, message):
                await asyncio.to_thread(self.kube.event, body, type_, reason, message)
            case engine.Notify(message):
                self.notify(message)
                if message.stage == "opened":
                    await failpoints.stall(failpoints.AFTER_OPEN)
            case engine.OpenPostmortem(incident, spec):
                await asyncio.to_thread(
                    self.kube.create_postmortem,
                    namespace,
                    incident,
                    spec.model_dump(by_alias=True, mode="json"),
                )
            case engine.AppendTimeline(incident, entry, resolution):
                await asyncio.to_thread(
                    self.kube.update_postmortem,
                    namespace,
                    incident,
                    functools.partial(postmortems.appended, entry=entry, resolution=resolution),
                )
            case engine.ResolvePostmortem(incident, resolved_at, impact, p0_above):
                resolve = functools.partial(
                    postmortems.resolved,
                    at=resolved_at,
                    impact=impact,
                    mitigations=engine.MITIGATIONS,
                    p0_above_percent=p0_above,
                )
                await asyncio.to_thread(self.kube.update_postmortem, namespace, incident, resolve)

    async def _failed(self, body: dict[str, Any], subject: engine.Subject, error: Exception) -> None:
        """The error as a condition and an Event on this ImageServer (best effort), written
        onto the ImageServer as it is now: the failed cycle may have written some of it."""
        message = f"the SLO loop could not judge or act: {type(error).__name__}: {error}"[:1000]
        try:
            fresh = await asyncio.to_thread(self.kube.get_imageserver, subject.namespace, subject.name)
            status = fresh.get("status") or {}
            effect = engine.failed(status, subject.generation, message, self.clock())
            if effect is not None:
                await asyncio.to_thread(self.kube.event, body, "Warning", "RemediationFailing", message)
                await self.execute(fresh, (effect,))
        except Exception:
            log.exception("could not report the failure on %s", subject.where)
