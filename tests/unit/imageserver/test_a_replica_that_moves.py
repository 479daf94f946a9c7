"""A storage replica is addressed by name, and a restarted pod keeps its name but not its
address (a StatefulSet pod on a real node): the frontends find it at its new address at once,
reads and uploads alike, not after a DNS cache runs out. Real storage apps served
in-process, a name that resolves where the test says."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import test_utils

from imageserver import peers
from imageserver.blobstore import BlobStore
from imageserver.faults import Faults
from imageserver.metrics import Metrics
from imageserver.replication import ReplicatedStore
from imageserver.storage_node import storage_app
from imageserver.stores import Unavailable
from imageserver.topology import TopologyWatcher

NAME = "shop-storage-dc-a-s0-0.shop-storage-dc-a-s0.test"
DATA = b"an acknowledged image"
ID = hashlib.sha256(DATA).hexdigest()


class Dns:
    """NAME resolves to `address`, as cluster DNS does for a pod; other names as usual."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.address = "127.0.0.1"
        self.lookups = 0
        real = socket.getaddrinfo

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if host == NAME:
                self.lookups += 1
                return [
                    (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (self.address, int(port)))
                ]
            return real(host, port, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def replica(root: Path, host: str, port: int) -> test_utils.TestServer:
    app = storage_app(
        BlobStore(root), Metrics("dc-a", "test", "storage"), Faults(), max_bytes=1 << 20, admin_token=None
    )
    return test_utils.TestServer(app, host=host, port=port)


@pytest.fixture
async def moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Dns, ReplicatedStore, test_utils.TestServer]]:
    dns = Dns(monkeypatch)
    before = replica(tmp_path / "before", "127.0.0.1", 0)
    await before.start_server()
    port = before.port
    assert port is not None
    topology = tmp_path / "topology.json"
    shards = [{"name": "s0", "replicas": [f"http://{NAME}:{port}"]}]
    topology.write_text(json.dumps({"writeQuorum": 1, "datacenters": [{"name": "dc-a", "shards": shards}]}))
    watcher = TopologyWatcher(topology)
    watcher.refresh()
    store = ReplicatedStore(watcher, "dc-a", Metrics("dc-a", "test", "frontend"), read_deadline=1.0)
    await store.start()
    await store.put(ID, {ID: DATA})  # the old address is known (cached) now
    assert dns.lookups == 1
    # The pod restarts: the old address answers no more, the new one holds the same volume.
    await before.close()
    after = replica(tmp_path / "before", "127.0.0.2", port)
    await after.start_server()
    dns.address = "127.0.0.2"
    try:
        yield dns, store, after
    finally:
        await store.close()
        await after.close()


async def attempts(twice: Callable[[], Awaitable[object]]) -> list[str]:
    """Two tries, as a user's retry: what each came to."""
    outcomes = []
    for _ in range(2):
        try:
            await twice()
            outcomes.append("done")
        except Unavailable:
            outcomes.append("503")
    return outcomes


async def test_a_read_fails_at_most_once_then_finds_the_new_address(
    moved: tuple[Dns, ReplicatedStore, test_utils.TestServer],
) -> None:
    dns, store, _ = moved
    started = time.monotonic()

    async def read() -> None:
        assert await store.get(ID, ID) == DATA

    assert (await attempts(read))[-1] == "done"
    assert dns.lookups == 2  # looked up again after the failure, not after a TTL
    assert time.monotonic() - started < 2.0


async def test_an_upload_fails_at_most_once_then_is_stored_at_the_new_address(
    moved: tuple[Dns, ReplicatedStore, test_utils.TestServer],
) -> None:
    dns, store, _ = moved
    other = b"the next upload"
    other_id = hashlib.sha256(other).hexdigest()

    async def upload() -> None:
        await store.put(other_id, {other_id: other})

    assert (await attempts(upload))[-1] == "done"
    assert dns.lookups == 2
    assert await store.get(other_id, other_id) == other


def test_an_address_lives_no_longer_than_cluster_dns_says() -> None:
    assert peers.DNS_TTL <= 5  # the TTL Kubernetes' DNS gives pod records


async def test_a_storage_node_finds_a_moved_peer_for_the_copies_it_owes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dns = Dns(monkeypatch)
    before = replica(tmp_path / "peer", "127.0.0.1", 0)
    await before.start_server()
    port = before.port
    assert port is not None
    BlobStore(tmp_path / "peer").put(ID, DATA)
    base = f"http://{NAME}:{port}"
    session = peers.session(2.0, None)
    try:
        assert await peers.has(session, base, ID) is True  # the old address cached
        await before.close()
        after = replica(tmp_path / "peer", "127.0.0.2", port)
        await after.start_server()
        dns.address = "127.0.0.2"
        try:
            answers = [await peers.has(session, base, ID) for _ in range(2)]
        finally:
            await after.close()
    finally:
        await session.close()
    assert answers[-1] is True, answers  # a hint's next attempt, not one a DNS TTL later
    assert dns.lookups == 2
