"""Read repair against real storage apps served in-process: a replica that lacks a blob gets
it back whichever way its answer to the read went, including none at all (a replica just back
from a crash is often slower than the hedge, and its cancelled answer says nothing)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from aiohttp import test_utils

from imageserver.blobstore import BlobStore
from imageserver.faults import Faults
from imageserver.metrics import Metrics
from imageserver.replication import ReplicatedStore
from imageserver.storage_node import storage_app
from imageserver.topology import TopologyWatcher

DATA = b"an acknowledged image"
ID = hashlib.sha256(DATA).hexdigest()


class Replica:
    def __init__(self, root: Path) -> None:
        self.store = BlobStore(root)
        self.faults = Faults()
        self.server = test_utils.TestServer(
            storage_app(
                self.store,
                Metrics("dc-a", "test", "storage"),
                self.faults,
                max_bytes=1 << 20,
                admin_token=None,
            )
        )

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[list[Replica]]:
    started = [Replica(tmp_path / name) for name in ("healthy", "lacking")]
    for replica in started:
        await replica.server.start_server()
    yield started
    for replica in started:
        await replica.server.close()


async def reader(tmp_path: Path, replicas: Sequence[Replica]) -> ReplicatedStore:
    topology = tmp_path / "topology.json"
    shards = [{"name": "s0", "replicas": [replica.url for replica in replicas]}]
    topology.write_text(json.dumps({"writeQuorum": 1, "datacenters": [{"name": "dc-a", "shards": shards}]}))
    watcher = TopologyWatcher(topology)
    watcher.refresh()
    store = ReplicatedStore(watcher, "dc-a", Metrics("dc-a", "test", "frontend"))
    await store.start()
    return store


async def held_by(replica: Replica, within: float = 5.0) -> bool:
    for _ in range(int(within / 0.05)):
        if replica.store.read(ID) == DATA:
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.mark.parametrize(
    ("lacking_first", "latency"),
    [
        pytest.param(False, 0.0, id="never asked (hedged read)"),
        pytest.param(True, 0.0, id="answered 404"),
        pytest.param(True, 0.3, id="slower than the hedge, its answer cancelled"),
    ],
)
async def test_the_replica_that_lacks_a_read_blob_gets_it_back(
    tmp_path: Path,
    replicas: list[Replica],
    monkeypatch: pytest.MonkeyPatch,
    lacking_first: bool,
    latency: float,
) -> None:
    healthy, lacking = replicas
    healthy.store.put(ID, DATA)
    lacking.faults.latency_seconds = latency
    order = [lacking, healthy] if lacking_first else [healthy, lacking]
    urls = [replica.url for replica in order]
    # The hedged read asks the replicas in this order, not at random.
    monkeypatch.setattr(random, "sample", lambda population, k: sorted(population, key=urls.index))
    store = await reader(tmp_path, replicas)
    try:
        assert await store.get(ID, ID) == DATA
        assert await held_by(lacking), "the replica that lacked the blob was not repaired"
    finally:
        await store.close()
