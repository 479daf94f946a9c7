"""The ImageServer's status as a pure function of what the operator observes and a clock.

The reconcile loop's part of the status: `Ready` means every workload has rolled out the
current spec and all its pods are ready; `Progressing` is true while any has not; `Degraded`
carries InvalidSpec when the spec cannot be run. A condition's lastTransitionTime moves only
when its status does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from imageserver_operator.api.models import CAPACITY_INSUFFICIENT, ImageServerSpec
from imageserver_operator.core import plan_view
from imageserver_operator.core.capacity import Plan
from imageserver_operator.core.render import Manifest

# The reconcile loop's conditions; the SLO loop owns the others (SLOHealthy, Rebalancing,
# RemediationFailing). Each loop applies only its own, under its own field manager.
CONDITIONS = ("Ready", "Progressing", "Degraded", "AutomationPaused", CAPACITY_INSUFFICIENT)


@dataclass(frozen=True)
class Observation:
    generation: int
    spec: ImageServerSpec | None  # None when the spec could not be read
    children: Mapping[tuple[str, str, str], Manifest]
    drained: frozenset[str]
    paused: bool
    problems: tuple[str, ...] = ()  # why the spec cannot be run (InvalidSpec)
    serving: Mapping[str, str] = field(default_factory=dict)  # datacenter → revision it runs
    # datacenter → its new shards not in the shard map yet (shards.py)
    waiting: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # The plan of spec.capacity (capacity.py), or why it cannot be planned; None without one.
    capacity: Plan | str | None = None


def running(spec: ImageServerSpec, serving: Mapping[str, str]) -> str:
    """What runs where, in one phrase: "1.1.0 in every datacenter", "1.1.0 in a; 1.0.0 in b, c"."""
    by_revision: dict[str, list[str]] = {}
    for dc in spec.datacenters:
        by_revision.setdefault(serving.get(dc.name) or spec.version, []).append(dc.name)
    if len(by_revision) == 1:
        return f"{next(iter(by_revision))} runs in every datacenter"
    return "; ".join(f"{revision} in {', '.join(names)}" for revision, names in by_revision.items())


def rollout_pending(obj: Manifest) -> str | None:
    """Why a Deployment or StatefulSet is not done rolling out, or None when it is."""
    spec, status = obj.get("spec", {}), obj.get("status", {})
    wanted = spec.get("replicas", 1)
    name = f"{obj['kind']}/{obj['metadata']['name']}"
    if status.get("observedGeneration", 0) < obj["metadata"].get("generation", 0):
        return f"{name}: change not yet seen by its controller"
    if obj["kind"] == "StatefulSet" and status.get("currentRevision") != status.get("updateRevision"):
        return f"{name}: {status.get('updatedReplicas', 0)}/{wanted} updated"
    if status.get("updatedReplicas", 0) < wanted:
        return f"{name}: {status.get('updatedReplicas', 0)}/{wanted} updated"
    if status.get("readyReplicas", 0) < wanted:
        return f"{name}: {status.get('readyReplicas', 0)}/{wanted} ready"
    if status.get("replicas", 0) > wanted:
        return f"{name}: {status['replicas'] - wanted} old pods still running"
    return None


def _workloads(children: Iterable[Manifest]) -> list[Manifest]:
    return [c for c in children if c["kind"] in ("Deployment", "StatefulSet")]


def _condition(
    old: Mapping[str, Any], type_: str, status: str, reason: str, message: str, *, generation: int, now: str
) -> dict[str, Any]:
    previous = old.get(type_, {})
    changed = previous.get("status") != status
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now
        if changed or not previous.get("lastTransitionTime")
        else previous["lastTransitionTime"],
        "observedGeneration": generation,
    }


def compute(observed: Observation, old_status: Mapping[str, Any], now: str) -> dict[str, Any]:
    """The status to write. `now` is RFC 3339, injected so tests control time."""
    old = {c["type"]: c for c in old_status.get("conditions", [])}
    gen = observed.generation

    def cond(type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
        return _condition(old, type_, status, reason, message, generation=gen, now=now)

    spec = observed.spec
    if spec is None or observed.problems:
        message = "; ".join(observed.problems) or "the spec could not be read"
        conditions = [
            cond("Ready", "False", "InvalidSpec", "nothing was applied: " + message),
            cond("Progressing", "False", "InvalidSpec", "waiting for a spec that can be run"),
            cond("Degraded", "True", "InvalidSpec", message),
        ]
    else:
        pending = [p for p in (rollout_pending(w) for w in _workloads(observed.children.values())) if p]
        expected = len(spec.datacenters) * (spec.shards + 1)
        missing = expected - len(_workloads(observed.children.values()))
        if missing > 0:
            pending.insert(0, f"{missing} workloads not created yet")
        # First: why a scale-up's new shards take no traffic yet (shards.py).
        waiting = [
            f"{dc}: shards {', '.join(shards)} join the shard map once their storage is ready"
            for dc, shards in sorted(observed.waiting.items())
        ]
        pending = [*waiting, *pending]
        if pending:
            conditions = [
                cond("Ready", "False", "RollingOut", "; ".join(pending[:5])),
                cond("Progressing", "True", "RollingOut", f"rolling out: {running(spec, observed.serving)}"),
            ]
        else:
            conditions = [
                cond("Ready", "True", "AllWorkloadsReady", running(spec, observed.serving)),
                cond(
                    "Progressing",
                    "False",
                    "RolloutComplete",
                    f"rolled out: {running(spec, observed.serving)}",
                ),
            ]
        conditions.append(cond("Degraded", "False", "AsExpected", ""))
    conditions.append(
        cond("AutomationPaused", "True", "PauseAnnotation", "automation paused by annotation")
        if observed.paused
        else cond("AutomationPaused", "False", "Active", "")
    )
    plan = observed.capacity if spec is not None else None
    kept: dict[str, Any] = {}
    if isinstance(plan, str):
        conditions.append(cond(CAPACITY_INSUFFICIENT, "Unknown", "CannotPlan", f"cannot plan: {plan}"[:4000]))
        kept = {"capacity": {"summary": f"cannot plan: {plan}"[:1000]}}
    elif plan is not None:
        short = bool(plan.short)
        conditions.append(
            cond(
                CAPACITY_INSUFFICIENT,
                "True" if short else "False",
                "SpecShortOfPlan" if short else "SpecCarriesPlan",
                plan_view.condition_message(plan)[:4000],
            )
        )
        kept = {"capacity": plan_view.status(plan)}
    elif spec is None and CAPACITY_INSUFFICIENT in old:
        # A spec that cannot be read says nothing about the load: the last plan stands (a
        # new transition would tell people again when the spec is fixed).
        conditions.append(dict(old[CAPACITY_INSUFFICIENT]))
        kept = {"capacity": old_status["capacity"]} if "capacity" in old_status else {}
    return {
        "observedGeneration": gen,
        "conditions": conditions,
        "datacenters": _datacenters(observed) if spec else old_status.get("datacenters", []),
        "revisions": _revisions(spec, old_status, now),
        "datacenterSummary": _summary(spec, observed.drained)
        if spec
        else old_status.get("datacenterSummary", ""),
        **kept,  # none without spec.capacity
    }


def owned(status: Mapping[str, Any]) -> dict[str, Any]:
    """The reconcile loop's part of a status as it stands: what `compute` would replace."""
    conditions = [c for c in status.get("conditions") or [] if c.get("type") in CONDITIONS]
    return {
        **{
            k: status[k]
            for k in ("observedGeneration", "datacenters", "revisions", "datacenterSummary", "capacity")
            if k in status
        },
        "conditions": conditions,
    }


def _summary(spec: ImageServerSpec, drained: frozenset[str]) -> str:
    return ",".join(f"{dc.name}(drained)" if dc.name in drained else dc.name for dc in spec.datacenters)


def _datacenters(observed: Observation) -> list[dict[str, Any]]:
    assert observed.spec is not None
    rows = []
    for dc in observed.spec.datacenters:
        mine = [
            w
            for w in _workloads(observed.children.values())
            if w["metadata"].get("labels", {}).get("imageserver.dev/datacenter") == dc.name
        ]
        ready = {
            kind: sum(w.get("status", {}).get("readyReplicas", 0) for w in mine if w["kind"] == kind)
            for kind in ("Deployment", "StatefulSet")
        }
        drained = dc.name in observed.drained
        rows.append(
            {
                "name": dc.name,
                "weight": 0 if drained else dc.weight,
                "drained": drained,
                "readyFrontends": ready["Deployment"],
                "readyStorage": ready["StatefulSet"],
            }
        )
    return rows


def _revisions(spec: ImageServerSpec | None, old_status: Mapping[str, Any], now: str) -> dict[str, str]:
    old = old_status.get("revisions", {}) or {}
    current, previous, since = old.get("current", ""), old.get("previous", ""), old.get("since", "")
    if spec is not None and spec.version != current:
        previous, current, since = current or previous, spec.version, now
    return {"current": current, "previous": previous, "since": since}
