"""The shard map: which storage nodes hold which shard in which datacenter.

The operator writes it as JSON into the `<name>-topology` ConfigMap; frontends read the
mounted file and pick up changes without a restart (`TopologyWatcher`). Example:

    {"generation": 3, "writeQuorum": 2, "crossDatacenter": "async",
     "datacenters": [{"name": "dc-a", "weight": 100, "drained": false,
                      "shards": [{"name": "s0", "replicas": ["http://10.0.0.5:8080", ...]}]}]}
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from imageserver import hashing

# A datacenter's name as the operator writes it: a DNS label (also what copies owed name).
DATACENTER_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

log = logging.getLogger(__name__)

CrossDatacenterMode = Literal["async", "sync"]


class TopologyError(ValueError):
    """The shard map is malformed; the message says where."""


@dataclass(frozen=True)
class Shard:
    name: str
    replicas: tuple[str, ...]


@dataclass(frozen=True)
class Datacenter:
    name: str
    shards: tuple[Shard, ...]
    weight: int = 100
    drained: bool = False

    def shard(self, name: str) -> Shard | None:
        return next((s for s in self.shards if s.name == name), None)

    def shards_for(self, key: str) -> list[Shard]:
        """The key's owner shard first, then the shards it would fall back to."""
        by_name = {s.name: s for s in self.shards}
        return [by_name[n] for n in hashing.ranked(key, by_name)]


@dataclass(frozen=True)
class Topology:
    datacenters: tuple[Datacenter, ...]
    write_quorum: int
    cross_datacenter: CrossDatacenterMode = "async"
    generation: int = 0

    def datacenter(self, name: str) -> Datacenter | None:
        return next((d for d in self.datacenters if d.name == name), None)

    def others(self, name: str) -> list[Datacenter]:
        return [d for d in self.datacenters if d.name != name]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise TopologyError(message)


def _shard(raw: Any, where: str) -> Shard:
    _require(isinstance(raw, Mapping), f"{where}: must be an object")
    name = raw.get("name")
    _require(isinstance(name, str) and bool(name), f"{where}.name: must be a non-empty string")
    replicas = raw.get("replicas")
    _require(
        isinstance(replicas, list) and bool(replicas) and all(isinstance(r, str) for r in replicas),
        f"{where}.replicas: must be a non-empty list of base URLs",
    )
    for url in replicas:
        _require(url.startswith(("http://", "https://")), f"{where}.replicas: {url!r} is not an http(s) URL")
    return Shard(name, tuple(r.rstrip("/") for r in replicas))


def _datacenter(raw: Any, where: str) -> Datacenter:
    _require(isinstance(raw, Mapping), f"{where}: must be an object")
    name = raw.get("name")
    _require(
        isinstance(name, str) and DATACENTER_NAME.fullmatch(name) is not None,
        f"{where}.name: must be a DNS label (lowercase letters, digits and '-')",
    )
    shards_raw = raw.get("shards")
    _require(isinstance(shards_raw, list) and bool(shards_raw), f"{where}.shards: must be a non-empty list")
    shards = tuple(_shard(s, f"{where}.shards[{i}]") for i, s in enumerate(shards_raw))
    names = [s.name for s in shards]
    _require(len(set(names)) == len(names), f"{where}.shards: shard names must be unique")
    weight = raw.get("weight", 100)
    _require(
        isinstance(weight, int) and not isinstance(weight, bool) and weight >= 0,
        f"{where}.weight: must be an integer ≥ 0",
    )
    drained = raw.get("drained", False)
    _require(isinstance(drained, bool), f"{where}.drained: must be true or false")
    return Datacenter(name, shards, weight, drained)


def parse(document: Any) -> Topology:
    """Validate a decoded topology document."""
    _require(isinstance(document, Mapping), "topology: must be a JSON object")
    dcs_raw = document.get("datacenters")
    _require(isinstance(dcs_raw, list) and bool(dcs_raw), "datacenters: must be a non-empty list")
    dcs = tuple(_datacenter(d, f"datacenters[{i}]") for i, d in enumerate(dcs_raw))
    names = [d.name for d in dcs]
    _require(len(set(names)) == len(names), "datacenters: names must be unique")
    quorum = document.get("writeQuorum", 1)
    _require(
        isinstance(quorum, int) and not isinstance(quorum, bool) and quorum >= 1,
        "writeQuorum: must be an integer ≥ 1",
    )
    for dc in dcs:
        for shard in dc.shards:
            _require(
                quorum <= len(shard.replicas),
                f"writeQuorum: {quorum} is more than the {len(shard.replicas)} replicas "
                f"of shard {shard.name} in {dc.name}",
            )
    mode = document.get("crossDatacenter", "async")
    _require(mode in ("async", "sync"), "crossDatacenter: must be 'async' or 'sync'")
    generation = document.get("generation", 0)
    _require(isinstance(generation, int), "generation: must be an integer")
    return Topology(dcs, quorum, mode, generation)


def load(path: Path) -> Topology:
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise TopologyError(f"{path}: not valid JSON ({error})") from None
    return parse(document)


class TopologyWatcher:
    """Holds the current topology and reloads the file when its content changes.

    ConfigMap volumes are updated by swapping a symlink, so the content is compared rather
    than the mtime. An invalid new file is logged and ignored: the last good map stays.
    """

    def __init__(
        self, path: Path, interval: float = 1.0, on_change: Callable[[Topology], None] = lambda _: None
    ) -> None:
        self.path = path
        self.interval = interval
        self.on_change = on_change
        self.current: Topology | None = None
        self._last_text: str | None = None

    def refresh(self) -> bool:
        """Read the file once; True when a new topology was taken."""
        try:
            text = self.path.read_text()
        except OSError as error:
            if self.current is None:
                log.warning("topology not readable yet", extra={"path": str(self.path), "error": str(error)})
            return False
        if text == self._last_text:
            return False
        self._last_text = text
        try:
            topology = parse(json.loads(text))
        except (json.JSONDecodeError, TopologyError) as error:
            log.error("ignoring invalid topology", extra={"path": str(self.path), "error": str(error)})
            return False
        self.current = topology
        self.on_change(topology)
        log.info("topology loaded", extra={"generation": topology.generation})
        return True

    async def run(self) -> None:
        while True:
            self.refresh()
            await asyncio.sleep(self.interval)
