"""Which shards the topology ConfigMap publishes to the frontends. Pure.

A frontend sends an upload to the shard its id hashes to, so a shard in the map whose storage
pods are still starting (a volume binding, an image pulling) answers every upload that hashes
to it with a 503. A scale-up therefore publishes its new shards only once each of them has
`writeQuorum` ready storage pods, all of a datacenter's new shards together (one change of
the ring, one rebalance). Shards already published stay, ready or not (taking one out would
move its keys). The API refuses fewer shards; a map that lists more than the spec (edited by
hand) is cut to the spec at once.

The map's `generation` is the spec generation it fully reflects: while any datacenter waits
for new shards, the map keeps the generation it had (a datacenter whose shards are ready gets
them under it), so a frontend's `imageserver_topology_generation` rises once every
datacenter has its new shards.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from imageserver_operator.api.models import ImageServerSpec
from imageserver_operator.core.render import Manifest, Owner, storage_name, topology_name


@dataclass(frozen=True)
class Published:
    """What the live topology ConfigMap lists: its generation and each datacenter's shards."""

    generation: int
    shards: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Publication:
    """What the next topology lists; empty `shards`: every datacenter the spec's shards."""

    generation: int
    shards: Mapping[str, int] = field(default_factory=dict)
    waiting: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # dc → shards not yet ready


def publication(
    spec: ImageServerSpec,
    generation: int,
    live: Published | None,
    ready: Mapping[tuple[str, int], int],
) -> Publication:
    """`ready[(dc, shard)]`: the ready pods of that shard's StatefulSet in that datacenter."""
    needed = min(spec.storage.write_quorum, spec.storage.replicas)
    shards: dict[str, int] = {}
    waiting: dict[str, tuple[str, ...]] = {}
    for dc in spec.datacenters:
        before = live.shards.get(dc.name) if live is not None else None
        if before is None or before >= spec.shards:
            shards[dc.name] = spec.shards  # a new map or datacenter (nothing to hash away from), or fewer
            continue
        new = range(before, spec.shards)
        late = tuple(f"s{i}" for i in new if ready.get((dc.name, i), 0) < needed)
        shards[dc.name] = before if late else spec.shards
        if late:
            waiting[dc.name] = late
    if live is None or not waiting:
        return Publication(generation, shards)
    return Publication(live.generation, shards, waiting)


def published(owner: Owner, children: Mapping[tuple[str, str, str], Manifest]) -> Published | None:
    """The live topology ConfigMap's map; None when there is none or it cannot be read."""
    return published_in(children.get(("v1", "ConfigMap", topology_name(owner))))


def published_in(config: Manifest | None) -> Published | None:
    try:
        document = json.loads((config or {})["data"]["topology.json"])
        return Published(
            int(document["generation"]),
            {str(dc["name"]): len(dc["shards"]) for dc in document["datacenters"]},
        )
    except (KeyError, TypeError, ValueError):
        return None


def unsure(live: Published | None, children: Mapping[tuple[str, str, str], Manifest]) -> bool:
    """No map among the children, but storage: the store may not have listed ConfigMaps yet
    (the operator just started), and taking the map for a new one would publish shards that
    are not ready. Read it from the API first."""
    return live is None and any(kind == "StatefulSet" for _, kind, _ in children)


def at_least(live: Published | None, last: Published | None) -> Published | None:
    """The live map, or what this operator last applied where that lists more shards: the
    store may not have the applied ConfigMap yet, and shards once published stay."""
    if live is None or last is None or last.generation < live.generation:
        return live or last
    return Published(
        last.generation,
        {dc: max(live.shards.get(dc, 0), last.shards.get(dc, 0)) for dc in {*live.shards, *last.shards}},
    )


def ready_storage(
    owner: Owner, spec: ImageServerSpec, children: Mapping[tuple[str, str, str], Manifest]
) -> dict[tuple[str, int], int]:
    """Ready pods per (datacenter, shard) from the live StatefulSets' status."""
    ready: dict[tuple[str, int], int] = {}
    for dc in spec.datacenters:
        for shard in range(spec.shards):
            workload = children.get(("apps/v1", "StatefulSet", storage_name(owner, dc.name, shard)))
            ready[(dc.name, shard)] = int(((workload or {}).get("status") or {}).get("readyReplicas") or 0)
    return ready
