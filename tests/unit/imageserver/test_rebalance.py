"""The rebalancer: strays go to their owner shard's replicas and are removed here only once the
owner's write quorum holds them, after the map has settled and once no other datacenter is
still owed them; datacenters that are new are owed every image. The owner's replicas are real
storage apps, served in-process."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import tempfile
import types
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import test_utils
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imageserver import hashing, peers, rebalance
from imageserver.blobstore import BlobStore
from imageserver.faults import Faults
from imageserver.handoff import Hints
from imageserver.metrics import Metrics
from imageserver.rebalance import Rebalancer
from imageserver.sealed import seal
from imageserver.storage_node import storage_app
from imageserver.topology import Topology, TopologyWatcher, parse
from imageserver.variants import renderer

TOKEN = "t"
REFUSED = "http://127.0.0.1:9"  # nothing listens on the discard port: refused at once
# This node's shard s0: never contacted by its own rebalancer, so these need not answer.
SELF = [f"{REFUSED}/s0-a", f"{REFUSED}/s0-b"]
SHARDS = ["s0", "s1"]


def sha256hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def owned_by(shard: str, count: int, shards: Sequence[str] = SHARDS) -> list[bytes]:
    """The first `count` image contents whose owner among `shards` is `shard`."""
    found: list[bytes] = []
    number = 0
    while len(found) < count:
        data = f"image number {number}".encode()
        if hashing.owner(sha256hex(data), shards) == shard:
            found.append(data)
        number += 1
    return found


MINE = owned_by("s0", 3)  # this node's shard owns them: they stay
STRAYS = owned_by("s1", 3)  # another shard owns them: they move


@dataclass(frozen=True)
class Image:
    id: str
    data: bytes
    variant: str
    sealed: bytes = field(repr=False)


def put_image(store: BlobStore, data: bytes) -> Image:
    """An original and its sealed 300x300 variant."""
    image_id = sha256hex(data)
    name = f"{image_id}.300x300.r{renderer()}"
    blob = seal(name, b"rendered " + data)
    store.put(image_id, data)
    store.put(name, blob)
    return Image(image_id, data, name, blob)


def shard_map(
    owner: Sequence[str], *, quorum: int = 2, generation: int = 1, datacenters: Sequence[str] = ("dc-a",)
) -> Topology:
    """Shards s0 (this node's) and s1 (replicas `owner`) in every named datacenter."""
    return parse(
        {
            "generation": generation,
            "writeQuorum": quorum,
            "datacenters": [
                {
                    "name": name,
                    "shards": [{"name": "s0", "replicas": SELF}, {"name": "s1", "replicas": list(owner)}],
                }
                for name in datacenters
            ],
        }
    )


DEAD_OWNER = [f"{REFUSED}/s1-a", f"{REFUSED}/s1-b"]


@dataclass
class Replica:
    store: BlobStore
    url: str


@contextlib.asynccontextmanager
async def owner_replicas(tmp_path: Path, count: int = 2) -> AsyncIterator[list[Replica]]:
    """Real storage apps that take writes with the token only."""
    servers: list[test_utils.TestServer] = []
    replicas: list[Replica] = []
    try:
        for number in range(count):
            store = BlobStore(tmp_path / f"owner-{number}")
            app = storage_app(
                store,
                Metrics("dc-a", "dev", "storage"),
                Faults(),
                max_bytes=1 << 20,
                admin_token=None,
                write_token=TOKEN,
            )
            server = test_utils.TestServer(app)
            servers.append(server)
            await server.start_server()
            replicas.append(Replica(store, str(server.make_url("")).rstrip("/")))
        yield replicas
    finally:
        for server in servers:
            await server.close()


@dataclass
class Node:
    store: BlobStore
    hints: Hints
    watch: TopologyWatcher
    metrics: Metrics
    rebalancer: Rebalancer

    def sample(self, name: str) -> float:
        value = self.metrics.registry.get_sample_value(name)
        assert value is not None, name
        return value

    @property
    def moved(self) -> float:
        return self.sample("imageserver_rebalance_moved_total")

    @property
    def remaining(self) -> float:
        return self.sample("imageserver_rebalance_remaining")

    @property
    def errors(self) -> float:
        return self.sample("imageserver_rebalance_errors_total")

    @property
    def record(self) -> list[str]:
        recorded: list[str] = json.loads(self.rebalancer.record.read_text())["datacenters"]
        return recorded


def node(
    root: Path,
    topology: Topology,
    *,
    settle: float = 0.0,
    datacenter: str = "dc-a",
    shard: str = "s0",
) -> Node:
    store = BlobStore(root / "node")
    hints = Hints(store.root)
    watch = TopologyWatcher(root / "topology.json")
    watch.current = topology
    metrics = Metrics(datacenter, "dev", "storage")
    rebalancer = Rebalancer(
        store,
        hints,
        watch,
        metrics,
        datacenter=datacenter,
        shard=shard,
        rate=1000.0,
        settle=settle,
        token=TOKEN,
    )
    return Node(store, hints, watch, metrics, rebalancer)


@contextlib.asynccontextmanager
async def session(rebalancer: Rebalancer, token: str | None = TOKEN) -> AsyncIterator[aiohttp.ClientSession]:
    rebalancer._session = peers.session(5.0, token)
    try:
        yield rebalancer._session
    finally:
        await rebalancer._session.close()
        rebalancer._session = None


def holds_whole(store: BlobStore, image: Image) -> bool:
    return store.read(image.id) == image.data and store.read_variant(image.variant) == image.sealed


# --- strays move ------------------------------------------------------------------------------


async def test_strays_go_to_every_owner_replica_and_leave_here_while_owned_images_stay(
    tmp_path: Path,
) -> None:
    async with owner_replicas(tmp_path) as replicas:
        here = node(tmp_path, shard_map([r.url for r in replicas]))
        strays = [put_image(here.store, data) for data in STRAYS]
        mine = [put_image(here.store, data) for data in MINE]
        # One owner replica already holds one stray: it counts towards the quorum as it is.
        put_image(replicas[0].store, STRAYS[0])
        async with session(here.rebalancer):
            await here.rebalancer.pass_once()
        for image in strays:
            for replica in replicas:
                assert holds_whole(replica.store, image)
                assert replica.store.names_of(image.id) == [image.variant, image.id]
            assert here.store.names_of(image.id) == []  # the original and its variant
        for image in mine:
            assert here.store.names_of(image.id) == [image.variant, image.id]
            assert holds_whole(here.store, image)
            for replica in replicas:
                assert replica.store.names_of(image.id) == []
        assert sorted(here.store.image_ids()) == sorted(image.id for image in mine)
        assert here.store.count == 2 * len(mine)
        assert here.moved == len(strays)
        assert here.remaining == 0
        assert here.errors == 0
        # Nothing left to move: the next pass changes nothing.
        async with session(here.rebalancer):
            await here.rebalancer.pass_once()
        assert here.moved == len(strays)
        assert here.remaining == 0


async def test_a_stray_stays_until_the_owners_write_quorum_holds_it(tmp_path: Path) -> None:
    async with owner_replicas(tmp_path) as replicas:
        live = replicas[0]
        here = node(tmp_path, shard_map([live.url, REFUSED], quorum=2, generation=1))
        stray = put_image(here.store, STRAYS[0])
        async with session(here.rebalancer):
            await here.rebalancer.pass_once()
            assert here.store.names_of(stray.id) == [stray.variant, stray.id]
            assert holds_whole(here.store, stray)
            assert here.errors == 1
            assert here.remaining == 1
            assert here.moved == 0
            assert holds_whole(live.store, stray)  # one copy ahead: harmless, and not a quorum
            assert replicas[1].store.names_of(stray.id) == []

            await here.rebalancer.pass_once()  # still one replica short: tried again, kept
            assert here.errors == 2
            assert here.remaining == 1
            assert holds_whole(here.store, stray)

            here.watch.current = shard_map([r.url for r in replicas], quorum=2, generation=2)
            await here.rebalancer.pass_once()
        assert here.store.names_of(stray.id) == []
        for replica in replicas:
            assert holds_whole(replica.store, stray)
        assert here.moved == 1
        assert here.remaining == 0
        assert here.errors == 2


async def test_a_quorum_of_one_moves_with_one_replica_down(tmp_path: Path) -> None:
    async with owner_replicas(tmp_path, 1) as replicas:
        here = node(tmp_path, shard_map([replicas[0].url, REFUSED], quorum=1))
        stray = put_image(here.store, STRAYS[0])
        async with session(here.rebalancer):
            await here.rebalancer.pass_once()
        assert holds_whole(replicas[0].store, stray)
        assert here.store.names_of(stray.id) == []
        assert here.moved == 1
        assert here.remaining == 0


async def test_nothing_moves_before_the_map_has_settled(tmp_path: Path) -> None:
    here = node(tmp_path, shard_map(DEAD_OWNER), settle=3600.0)
    strays = [put_image(here.store, data) for data in STRAYS]
    put_image(here.store, MINE[0])
    # No session: any attempt to reach a replica would fail the test.
    await here.rebalancer.pass_once()
    await here.rebalancer.pass_once()
    for image in strays:
        assert holds_whole(here.store, image)
    assert here.remaining == len(strays)
    assert here.moved == 0
    assert here.errors == 0


@pytest.mark.parametrize(("datacenter", "shard"), [("dc-a", "s9"), ("dc-z", "s0")])
async def test_a_node_outside_the_topology_keeps_everything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, datacenter: str, shard: str
) -> None:
    topology = shard_map(DEAD_OWNER, datacenters=("dc-a", "dc-b"))
    here = node(tmp_path, topology, datacenter=datacenter, shard=shard)
    images = [put_image(here.store, data) for data in [*STRAYS, *MINE]]
    with caplog.at_level(logging.WARNING, logger="imageserver.rebalance"):
        await here.rebalancer.pass_once()  # no session: no HTTP call may happen
        await here.rebalancer.pass_once()
    for image in images:
        assert holds_whole(here.store, image)
    assert here.moved == 0
    assert here.remaining == 0
    assert here.errors == 0
    warnings = [r for r in caplog.records if r.name == rebalance.__name__ and r.levelno == logging.WARNING]
    assert len(warnings) == 1  # said once, not every pass


async def test_without_a_topology_nothing_happens(tmp_path: Path) -> None:
    here = node(tmp_path, shard_map(DEAD_OWNER))
    here.watch.current = None
    image = put_image(here.store, STRAYS[0])
    await here.rebalancer.pass_once()
    assert holds_whole(here.store, image)
    assert not here.rebalancer.record.exists()
    assert here.remaining == 0


async def test_a_stray_still_owed_to_another_datacenter_waits_for_its_hint(tmp_path: Path) -> None:
    async with owner_replicas(tmp_path) as replicas:
        here = node(tmp_path, shard_map([r.url for r in replicas]))
        stray = put_image(here.store, STRAYS[0])
        other = put_image(here.store, STRAYS[1])
        here.hints.owe(stray.id, ["dc-b"])
        async with session(here.rebalancer):
            await here.rebalancer.pass_once()
            assert holds_whole(here.store, stray)
            assert here.hints.pending[stray.id].owed == {"dc-b"}
            for replica in replicas:
                assert replica.store.names_of(stray.id) == []  # not even sent yet
                assert holds_whole(replica.store, other)  # the one without a hint moved
            assert here.store.names_of(other.id) == []
            assert here.moved == 1
            assert here.remaining == 1
            assert here.errors == 0

            here.hints.settle(stray.id, "dc-b")
            await here.rebalancer.pass_once()
        assert here.store.names_of(stray.id) == []
        for replica in replicas:
            assert holds_whole(replica.store, stray)
        assert here.moved == 2
        assert here.remaining == 0


async def test_the_storage_refuses_writes_without_its_token_and_nothing_is_removed(tmp_path: Path) -> None:
    async with owner_replicas(tmp_path) as replicas:
        here = node(tmp_path, shard_map([r.url for r in replicas]))
        strays = [put_image(here.store, data) for data in STRAYS]
        for token in ("wrong", None):
            async with session(here.rebalancer, token) as client:
                await here.rebalancer.pass_once()
                response = await client.put(f"{replicas[0].url}/v1/blobs/{strays[0].id}", data=strays[0].data)
                assert response.status == 401
                response.release()
        for image in strays:
            assert holds_whole(here.store, image)
            for replica in replicas:
                assert replica.store.names_of(image.id) == []
        assert here.moved == 0
        assert here.remaining == len(strays)
        assert here.errors == 2 * len(strays)


# --- the full listing after the map has long settled ---------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


async def test_long_after_a_change_a_clean_node_lists_its_images_only_every_rescan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(rebalance, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    here = node(tmp_path, shard_map(DEAD_OWNER, generation=1), settle=1e9)  # counts, never moves
    put_image(here.store, MINE[0])
    await here.rebalancer.pass_once()  # t=0: the generation is new
    clock.now = rebalance.QUIET_AFTER + 1
    await here.rebalancer.pass_once()  # clean, and the map long settled
    assert here.remaining == 0
    put_image(here.store, STRAYS[0])  # from a frontend that still had an old map
    clock.now += rebalance.RESCAN / 2
    await here.rebalancer.pass_once()
    assert here.remaining == 0  # not listed yet
    clock.now += rebalance.RESCAN / 2 + 1
    await here.rebalancer.pass_once()
    assert here.remaining == 1  # RESCAN after the clean listing: listed again

    # A new map: listed at every pass again.
    put_image(here.store, STRAYS[1])
    here.watch.current = shard_map(DEAD_OWNER, generation=2)
    clock.now += 1
    await here.rebalancer.pass_once()
    assert here.remaining == 2


# --- datacenters added ---------------------------------------------------------------------------


SETTLE = 10.0


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    made = Clock()
    monkeypatch.setattr(rebalance, "time", types.SimpleNamespace(monotonic=made.monotonic))
    return made


async def test_a_new_datacenter_is_owed_every_image_once(tmp_path: Path, clock: Clock) -> None:
    here = node(tmp_path, shard_map(DEAD_OWNER, datacenters=("dc-a",)), settle=SETTLE)
    images = [put_image(here.store, data) for data in [*MINE, *STRAYS]]
    async with session(here.rebalancer):  # strays try their dead owner: they stay
        await here.rebalancer.pass_once()
        assert here.record == []
        assert here.hints.pending == {}

        here.watch.current = shard_map(DEAD_OWNER, datacenters=("dc-a", "dc-b"), generation=2)
        await here.rebalancer.pass_once()
        assert set(here.hints.pending) == {image.id for image in images}
        for image in images:
            assert here.hints.pending[image.id].owed == {"dc-b"}
        assert here.record == []  # not before every frontend has the new map
        assert Hints(here.store.root).pending.keys() == here.hints.pending.keys()  # durable
        clock.now += SETTLE + 1
        await here.rebalancer.pass_once()
        assert here.record == ["dc-b"]

        for image in images:  # the handoff delivers them
            here.hints.settle(image.id, "dc-b")
        await here.rebalancer.pass_once()
        assert here.hints.pending == {}  # nothing owed again
        assert here.record == ["dc-b"]

        # A third datacenter: owed everything; dc-b, already served, is not owed again.
        here.watch.current = shard_map(DEAD_OWNER, datacenters=("dc-a", "dc-b", "dc-c"), generation=3)
        await here.rebalancer.pass_once()
        for image in images:
            assert here.hints.pending[image.id].owed == {"dc-c"}
        clock.now += SETTLE + 1
        await here.rebalancer.pass_once()
        assert here.record == ["dc-b", "dc-c"]
    for image in images:
        assert holds_whole(here.store, image)


async def test_a_first_start_owes_nothing_and_records_the_datacenters_known(tmp_path: Path) -> None:
    here = node(tmp_path, shard_map(DEAD_OWNER, datacenters=("dc-a", "dc-b")), settle=3600.0)
    put_image(here.store, MINE[0])
    await here.rebalancer.pass_once()
    assert here.hints.pending == {}
    assert here.record == ["dc-b"]


async def test_a_datacenter_removed_and_added_again_is_owed_again(tmp_path: Path, clock: Clock) -> None:
    here = node(tmp_path, shard_map(DEAD_OWNER, datacenters=("dc-a", "dc-b")), settle=SETTLE)
    image = put_image(here.store, MINE[0])
    await here.rebalancer.pass_once()
    here.watch.current = shard_map(DEAD_OWNER, datacenters=("dc-a",), generation=2)
    await here.rebalancer.pass_once()
    assert here.record == []
    here.watch.current = shard_map(DEAD_OWNER, datacenters=("dc-a", "dc-b"), generation=3)
    await here.rebalancer.pass_once()
    assert here.hints.pending[image.id].owed == {"dc-b"}


@pytest.mark.parametrize(
    "garbage", ["not json", "", "[]", "null", '"dc-b"', '{"dcs": ["dc-b"]}', '{"datacenters": 5}']
)
async def test_an_unreadable_record_owes_every_other_datacenter_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, clock: Clock, garbage: str
) -> None:
    here = node(tmp_path, shard_map(DEAD_OWNER, datacenters=("dc-a", "dc-b", "dc-c")), settle=SETTLE)
    images = [put_image(here.store, data) for data in [MINE[0], STRAYS[0]]]
    await here.rebalancer.pass_once()
    assert here.record == ["dc-b", "dc-c"]
    assert here.hints.pending == {}
    here.rebalancer.record.write_text(garbage)
    with caplog.at_level(logging.ERROR, logger="imageserver.rebalance"):
        await here.rebalancer.pass_once()
    assert any(r.name == "imageserver.rebalance" and r.levelno == logging.ERROR for r in caplog.records)
    for image in images:
        assert here.hints.pending[image.id].owed == {"dc-b", "dc-c"}
    clock.now += SETTLE + 1
    await here.rebalancer.pass_once()
    assert here.record == ["dc-b", "dc-c"]  # whole again
    assert [p.name for p in here.store.root.iterdir() if p.name.startswith("rebalance")] == ["rebalance.json"]


async def test_an_image_arriving_before_the_new_map_settled_is_owed_to_the_new_datacenter(
    tmp_path: Path,
) -> None:
    here = node(tmp_path, shard_map(DEAD_OWNER, datacenters=("dc-a",)), settle=3600.0)
    put_image(here.store, MINE[0])
    await here.rebalancer.pass_once()
    here.watch.current = shard_map(DEAD_OWNER, datacenters=("dc-a", "dc-b"), generation=2)
    await here.rebalancer.pass_once()
    assert here.hints.pending[sha256hex(MINE[0])].owed == {"dc-b"}
    # A frontend that has not seen dc-b yet stores an upload here, owing no one.
    late = put_image(here.store, MINE[1])
    await here.rebalancer.pass_once()  # seconds later, well within the settle time
    assert late.id in here.hints.pending
    assert here.hints.pending[late.id].owed == {"dc-b"}


async def test_a_stray_with_a_damaged_variant_still_moves(tmp_path: Path) -> None:
    async with owner_replicas(tmp_path) as replicas:
        here = node(tmp_path, shard_map([r.url for r in replicas]))
        stray = put_image(here.store, STRAYS[0])
        here.store.path(stray.variant).write_bytes(b"bit rot")
        async with session(here.rebalancer):
            await here.rebalancer.pass_once()
        for replica in replicas:
            assert replica.store.read(stray.id) == stray.data
            assert replica.store.read_variant(stray.variant) is None  # derived: rendered again
        assert here.store.names_of(stray.id) == []
        assert here.moved == 1


# --- which images are strays ---------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shards=st.lists(st.sampled_from(["s1", "s2", "s3", "s4"]), unique=True, max_size=3),
    contents=st.lists(st.binary(max_size=16), unique=True, max_size=8),
)
def test_the_remaining_count_is_the_images_another_shard_owns(
    shards: list[str], contents: list[bytes]
) -> None:
    names = ["s0", *shards]
    topology = parse(
        {
            "writeQuorum": 1,
            "datacenters": [
                {
                    "name": "dc-a",
                    "shards": [{"name": name, "replicas": [f"{REFUSED}/{name}"]} for name in names],
                }
            ],
        }
    )
    with tempfile.TemporaryDirectory() as temp:
        here = node(Path(temp), topology, settle=3600.0)
        for data in contents:
            here.store.put(sha256hex(data), data)
        asyncio.run(here.rebalancer.pass_once())
        expected = sum(hashing.owner(sha256hex(data), names) != "s0" for data in contents)
        assert here.remaining == expected
        assert len(here.store.image_ids()) == len(contents)
