"""Storage nodes and frontends of several datacenters as real processes, with the topology
file that ties them together, for the data plane's integration tests."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from servers import Processes, Server


@dataclass
class Cluster:
    processes: Processes
    storage: dict[tuple[str, str, int], Server]  # (datacenter, shard, replica)
    frontends: dict[str, Server]
    topology: Path
    quorum: int

    def document(self, generation: int = 1) -> dict[str, Any]:
        datacenters: dict[str, dict[str, list[str]]] = {}
        for (dc, shard, _), server in sorted(self.storage.items()):
            datacenters.setdefault(dc, {}).setdefault(shard, []).append(server.url)
        return {
            "generation": generation,
            "writeQuorum": self.quorum,
            "crossDatacenter": "async",
            "datacenters": [
                {"name": dc, "shards": [{"name": s, "replicas": urls} for s, urls in shards.items()]}
                for dc, shards in datacenters.items()
            ],
        }

    def write_topology(self, generation: int = 1) -> None:
        tmp = self.topology.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.document(generation)))
        tmp.replace(self.topology)

    def add_storage(
        self, dc: str, shard: str, replica: int, data: Path, env: dict[str, str] | None = None
    ) -> Server:
        server = self.processes.start(
            "storage",
            "--data",
            str(data / f"{dc}-{shard}-{replica}"),
            "--datacenter",
            dc,
            "--topology",
            str(self.topology),
            "--shard",
            shard,
            env=env,
        )
        self.storage[(dc, shard, replica)] = server
        return server

    def shards(self, dc: str) -> list[str]:
        return sorted({s for d, s, _ in self.storage if d == dc})


def start_cluster(
    processes: Processes,
    tmp_path: Path,
    dcs: tuple[str, ...],
    *,
    shards: int,
    replicas: int,
    quorum: int,
    storage_env: dict[str, str] | None = None,
) -> Cluster:
    cluster = Cluster(processes, {}, {}, tmp_path / "topology.json", quorum)
    for dc in dcs:
        for s in range(shards):
            for r in range(replicas):
                cluster.add_storage(dc, f"s{s}", r, tmp_path, storage_env)
    cluster.write_topology()
    for dc in dcs:
        cluster.frontends[dc] = processes.start(
            "frontend", "--topology", str(cluster.topology), "--datacenter", dc
        )
    for frontend in cluster.frontends.values():
        assert requests.get(f"{frontend.url}/readyz", timeout=5).status_code == 200
    return cluster


def metric(server: Server, name: str) -> float:
    for line in requests.get(f"{server.url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def eventually(check: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return bool(check())
