"""The reconcile loop: a de-duplicating queue of ImageServers, fed by watch events and a
periodic resync, worked by a few workers that act only while this replica leads.

One reconcile: read the ImageServer and its children from the store, render the desired
objects, apply the ones that differ (server-side apply), compute the status and write it if
it changed, and tell people what happened in Events. Nothing is read from the API and
nothing is written when nothing changed.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from imageserver_operator.adapters.kube import FIELD_MANAGER, Kube
from imageserver_operator.adapters.metrics import OperatorMetrics
from imageserver_operator.adapters.store import ObjectKey, Store, status_of
from imageserver_operator.api.durations import stamp
from imageserver_operator.api.models import CAPACITY_INSUFFICIENT, ImageServerSpec
from imageserver_operator.api.unit_costs import measured
from imageserver_operator.core import capacity, reconcile, rollout, shards, status
from imageserver_operator.core.annotations import drained_of, paused_of
from imageserver_operator.core.render import Environment, Owner, render, storage_token, topology_name

log = logging.getLogger(__name__)


Clock = Callable[[], datetime.datetime]
WARNINGS = ("Degraded", CAPACITY_INSUFFICIENT)  # conditions whose True is a Warning Event


class Controller:
    def __init__(
        self,
        store: Store,
        kube: Kube,
        *,
        is_leader: Callable[[], bool],
        resync_seconds: float = 60.0,
        workers: int = 4,
        clock: Clock = lambda: datetime.datetime.now(datetime.UTC),
        metrics: OperatorMetrics | None = None,
        progressive: bool = True,
    ) -> None:
        self.metrics = metrics or OperatorMetrics()
        # Without an SLO loop nothing would move a rollout: every datacenter runs spec.version.
        self.progressive = progressive
        self.store = store
        self.kube = kube
        self.is_leader = is_leader
        self.resync_seconds = resync_seconds
        self.workers = workers
        self.clock = clock
        self.apis = {"gateway_api": False, "service_monitor": False, "prometheus_rule": False}
        self._queue: asyncio.Queue[ObjectKey] = asyncio.Queue()
        self._queued: set[ObjectKey] = set()
        self._running: set[ObjectKey] = set()
        self._again: set[ObjectKey] = set()
        self._tokens_made: set[str] = set()  # ImageServer uids whose storage token exists
        # The shard map last applied per ImageServer uid, until the store has it (shards.at_least).
        self._published: dict[str, shards.Published | None] = {}

    def enqueue(self, where: ObjectKey) -> None:
        if where in self._running:
            self._again.add(where)  # reconcile once more after the current pass
        elif where not in self._queued:
            self._queued.add(where)
            self._queue.put_nowait(where)

    def enqueue_all(self) -> None:
        for where in self.store.names():
            self.enqueue(where)

    async def run(self) -> None:
        workers = [asyncio.create_task(self._work()) for _ in range(self.workers)]
        try:
            while True:
                try:
                    self.apis = await asyncio.to_thread(self.kube.optional_apis)
                except Exception:
                    log.exception("could not check for optional APIs; keeping the last answer")
                self.enqueue_all()
                await asyncio.sleep(self.resync_seconds)
        finally:
            for worker in workers:
                worker.cancel()

    async def _work(self) -> None:
        while True:
            where = await self._queue.get()
            self._queued.discard(where)
            self._running.add(where)
            try:
                if self.is_leader():
                    await self.reconcile(where)
                    self.metrics.reconciles.labels(result="ok").inc()
            except Exception:
                self.metrics.reconciles.labels(result="error").inc()
                log.exception("reconcile failed; retrying in 5s", extra={"imageserver": "/".join(where)})
                asyncio.get_running_loop().call_later(5, self.enqueue, where)
            finally:
                self._running.discard(where)
                if where in self._again:
                    self._again.discard(where)
                    self.enqueue(where)

    async def reconcile(self, where: ObjectKey) -> None:
        body = self.store.get(where)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return  # deleted: owner references let the garbage collector remove the rest
        meta = body["metadata"]
        owner = Owner(meta["name"], meta["namespace"], meta["uid"], meta.get("generation", 1))
        problems: list[str] = []
        try:
            spec: ImageServerSpec | None = ImageServerSpec.model_validate(body.get("spec", {}))
        except ValidationError as error:
            spec = None
            problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:5]]
        if spec is not None:
            problems = reconcile.semantic_problems(spec)
        drained = drained_of(body)
        # Each datacenter at the revision the rollout gives it (the SLO loop's status.rollout).
        held = rollout.of(status_of(body).get("rollout")) if self.progressive else None
        serving = rollout.serving(spec, held) if spec else {}
        children = self.store.children(owner.uid)
        applied: list[str] = []
        pruned: list[str] = []
        waiting: dict[str, tuple[str, ...]] = {}
        if spec is not None and not problems:
            if owner.uid not in self._tokens_made:  # before the pods that mount it
                token = storage_token(owner, secrets.token_urlsafe(32))
                await asyncio.to_thread(self.kube.create_secret_once, token)
                self._tokens_made.add(owner.uid)
            publication = await self._publication(owner, spec, children)
            waiting = dict(publication.waiting)
            environment = Environment(
                drained=drained,
                revisions=serving,
                shards=publication.shards,
                topology_generation=publication.generation,
                **self.apis,
            )
            desired = render(owner, spec, environment)
            for obj in reconcile.plan(desired, children):
                await asyncio.to_thread(self.kube.apply, obj)
                applied.append(f"{obj['kind']}/{obj['metadata']['name']}")
                if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == topology_name(owner):
                    self._published[owner.uid] = shards.published_in(obj)
            # Volumes stay: StatefulSets keep their claims, so a removed datacenter's data is not lost.
            for obj in reconcile.stale(desired, children):
                await asyncio.to_thread(self.kube.delete, obj)
                pruned.append(f"{obj['kind']}/{obj['metadata']['name']}")
        observed = status.Observation(
            generation=owner.generation,
            spec=spec if not problems else None,
            children=children,
            drained=drained,
            paused=paused_of(body),
            problems=tuple(problems),
            serving=serving,
            waiting=waiting,
            capacity=_planned(spec) if spec is not None and spec.capacity and not problems else None,
        )
        old = status_of(body)
        new = status.compute(observed, old, stamp(self.clock()))
        if applied:
            await self._event(body, "Normal", "Applied", f"applied {len(applied)}: {', '.join(applied[:12])}")
        if pruned:
            await self._event(
                body, "Normal", "Pruned", f"deleted {len(pruned)} no longer wanted: {', '.join(pruned[:12])}"
            )
        if new != status.owned(old):
            # Only this loop's fields, under its own field manager, onto the version they were
            # computed from (on a conflict the watch brings the new version, and a reconcile).
            written = await asyncio.to_thread(
                self.kube.apply_status,
                owner.namespace,
                owner.name,
                new,
                FIELD_MANAGER,
                meta.get("resourceVersion"),
            )
            if not written:
                return
            await self._announce(body, old, new)

    async def _publication(
        self, owner: Owner, spec: ImageServerSpec, children: Mapping[tuple[str, str, str], Any]
    ) -> shards.Publication:
        """Which shards the topology lists (core/shards.py), from the best map at hand."""
        live = shards.published(owner, children)
        if shards.unsure(live, children):
            data = await asyncio.to_thread(self.kube.configmap_data, owner.namespace, topology_name(owner))
            live = shards.published_in({"data": data} if data is not None else None)
        live = shards.at_least(live, self._published.get(owner.uid))
        return shards.publication(spec, owner.generation, live, shards.ready_storage(owner, spec, children))

    async def _announce(self, body: dict[str, Any], old: Any, new: dict[str, Any]) -> None:
        """An Event for each condition that changed status."""
        before = {c["type"]: c for c in old.get("conditions", [])}
        for condition in new["conditions"]:
            previous = before.get(condition["type"], {})
            if (
                previous.get("status") == condition["status"]
                and previous.get("reason") == condition["reason"]
            ):
                continue
            if not previous and condition["status"] != "True":
                continue  # a first status that only says "nothing to report"
            warning = condition["type"] in WARNINGS and condition["status"] == "True"
            await self._event(
                body,
                "Warning" if warning else "Normal",
                condition["reason"] or condition["type"],
                f"{condition['type']}={condition['status']}: {condition['message']}".rstrip(": "),
            )

    async def _event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        await asyncio.to_thread(self.kube.event, body, type_, reason, message)


def _planned(spec: ImageServerSpec) -> capacity.Plan | str:
    """The capacity plan, or why there is none: a figure it cannot use is the spec's to fix,
    said in the condition, never a failed reconcile."""
    try:
        return capacity.plan(spec, measured())
    except (ValueError, ArithmeticError) as why:
        return str(why)
