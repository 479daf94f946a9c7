"""Shards are added (1 → 3 → 5) and a datacenter joins while uploads and reads go on, a
storage node and a frontend are SIGKILLed mid-rebalance: every acknowledged image reads back
byte-exact at every sampled moment, the rebalance completes, and nothing is left on a node
that does not own it."""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import Counter
from pathlib import Path

import requests
import samples
from clusters import Cluster, eventually, metric, start_cluster
from servers import Processes, Server

from imageserver import hashing

FAST = {
    "IMAGESERVER_REBALANCE_SETTLE": "2",  # frontends reload the map within a second here
    "IMAGESERVER_REBALANCE_RATE": "500",
    "IMAGESERVER_REBALANCE_INTERVAL": "0.25",
    "IMAGESERVER_HANDOFF_MAX_BACKOFF": "2",
}


def _strays(cluster: Cluster, root: Path) -> list[str]:
    """Originals on disk on a node whose shard does not own them."""
    found = []
    for dc, shard, replica in cluster.storage:
        shards = cluster.shards(dc)
        for path in (root / f"{dc}-{shard}-{replica}" / "objects").glob("*/*"):
            if "." not in path.name and hashing.owner(path.name, shards) != shard:
                found.append(f"{dc}/{shard}/{replica}: {path.name[:12]}")
    return found


def _settled(cluster: Cluster, root: Path) -> bool:
    return not _strays(cluster, root) and all(
        metric(s, "imageserver_rebalance_remaining") == 0 for s in cluster.storage.values()
    )


class Traffic:
    """One uploader through `writer`, two readers through `reader` that check every byte."""

    def __init__(self, writer: Server, reader: Server) -> None:
        self.writer, self.reader = writer, reader
        self.acknowledged: dict[str, bytes] = {}
        self.refused: Counter[str] = Counter()
        self.wrong: list[str] = []
        self.reads = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._upload)] + [
            threading.Thread(target=self._read) for _ in range(2)
        ]

    def upload(self, count: int, seed: int) -> None:
        session = requests.Session()
        for i in range(count):
            image = samples.jpeg(96, 72, seed=seed + i)
            answer = session.post(f"{self.writer.url}/v1/images", data=image, timeout=30)
            assert answer.status_code == 201, answer.text
            self.acknowledged[answer.json()["id"]] = image

    def _upload(self) -> None:
        session = requests.Session()
        seed = 1_000_000
        while not self.stop.is_set():
            image = samples.jpeg(96, 72, seed=seed)
            seed += 1
            try:
                answer = session.post(f"{self.writer.url}/v1/images", data=image, timeout=30)
            except requests.ConnectionError:
                self.refused["connection"] += 1  # the frontend was killed: not acknowledged
                time.sleep(0.2)
                continue
            if answer.status_code == 201:
                with self.lock:
                    self.acknowledged[answer.json()["id"]] = image
            else:
                self.refused[str(answer.status_code)] += 1

    def _read(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            with self.lock:
                image_id, image = random.choice(list(self.acknowledged.items()))
            answer = session.get(f"{self.reader.url}/v1/images/{image_id}", timeout=30)
            self.reads += 1
            if answer.status_code != 200 or answer.content != image:
                self.wrong.append(f"{time.strftime('%X')} {image_id[:12]}: {answer.status_code}")

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def test_resharding_and_a_new_datacenter_lose_nothing_under_traffic(
    imageserver: Processes, tmp_path: Path
) -> None:
    cluster = start_cluster(
        imageserver, tmp_path, ("dc-a",), shards=1, replicas=2, quorum=2, storage_env=FAST
    )
    writer = cluster.frontends["dc-a"]
    reader = imageserver.start("frontend", "--topology", str(cluster.topology), "--datacenter", "dc-a")
    traffic = Traffic(writer, reader)
    traffic.upload(60, seed=0)
    generation = 1
    with traffic:
        for shards in (3, 5):
            moved_before = sum(
                metric(s, "imageserver_rebalance_moved_total") for s in cluster.storage.values()
            )
            source = cluster.storage[("dc-a", "s0", 0)]
            source_moved = metric(source, "imageserver_rebalance_moved_total")
            for s in range(len(cluster.shards("dc-a")), shards):
                for r in range(2):
                    cluster.add_storage("dc-a", f"s{s}", r, tmp_path, FAST)
            generation += 1
            cluster.write_topology(generation)
            print(f"{time.strftime('%X')} {shards} shards in the map")
            started = time.monotonic()
            # Mid-rebalance: a storage node of the old owner and the uploading frontend die.
            assert eventually(
                lambda s=source, m=source_moved: metric(s, "imageserver_rebalance_moved_total") > m,
                timeout=30,
            )
            victim = cluster.storage[("dc-a", "s0", 1)]
            victim.kill()
            writer.kill()
            time.sleep(1)
            imageserver.restart(victim)
            imageserver.restart(writer)
            assert eventually(lambda: _settled(cluster, tmp_path), timeout=90), _strays(cluster, tmp_path)[
                :10
            ]
            moved = sum(metric(s, "imageserver_rebalance_moved_total") for s in cluster.storage.values())
            took = time.monotonic() - started
            moves = moved - moved_before
            print(f"{time.strftime('%X')} -> {shards} shards: {moves:.0f} moves in {took:.1f} s")

        # A datacenter joins: every image is owed to it, and reaches it.
        for s in range(2):
            for r in range(2):
                cluster.add_storage("dc-b", f"s{s}", r, tmp_path, FAST)
        generation += 1
        cluster.write_topology(generation)
        print(f"{time.strftime('%X')} dc-b joins")
        remote = imageserver.start("frontend", "--topology", str(cluster.topology), "--datacenter", "dc-b")
        time.sleep(2)
    acknowledged = dict(traffic.acknowledged)
    print(f"{len(acknowledged)} acknowledged, {traffic.reads} reads, refused {dict(traffic.refused)}")
    assert not traffic.wrong, traffic.wrong[:10]
    assert set(traffic.refused) <= {"503", "connection"}, traffic.refused

    def in_dc_b() -> bool:
        return all(
            sum(
                requests.head(
                    f"{cluster.storage[('dc-b', owner, r)].url}/v1/blobs/{image_id}", timeout=5
                ).status_code
                == 200
                for r in range(2)
            )
            == 2
            for image_id in acknowledged
            for owner in [hashing.owner(image_id, cluster.shards("dc-b"))]
        )

    assert eventually(in_dc_b, timeout=90), "not every image reached the new datacenter"
    assert eventually(lambda: _settled(cluster, tmp_path), timeout=30), _strays(cluster, tmp_path)[:10]
    session = requests.Session()
    for image_id, image in acknowledged.items():
        for frontend in (reader, remote):
            assert session.get(f"{frontend.url}/v1/images/{image_id}", timeout=10).content == image


def test_a_frontend_on_the_old_map_finds_images_stored_under_the_new_one(
    imageserver: Processes, tmp_path: Path
) -> None:
    """Frontends take a new map at different moments (a ConfigMap reaches each pod in its own
    time). One that has not yet read it looks only among the shards it knows, while one that
    has stores new images on the new shards: a read of those must not be a 404."""
    cluster = start_cluster(imageserver, tmp_path, ("dc-a",), shards=1, replicas=2, quorum=2)
    stale = imageserver.start(
        "frontend", "--topology", str(cluster.topology), "--datacenter", "dc-a", "--topology-interval", "3600"
    )
    for s in range(1, 4):
        for r in range(2):
            cluster.add_storage("dc-a", f"s{s}", r, tmp_path)  # the default settle: nothing moves
    cluster.write_topology(2)
    fresh = imageserver.start("frontend", "--topology", str(cluster.topology), "--datacenter", "dc-a")
    stored = {}
    for seed in range(24):
        image = samples.jpeg(64, 48, seed=seed)
        answer = requests.post(f"{fresh.url}/v1/images", data=image, timeout=30)
        assert answer.status_code == 201, answer.text
        stored[answer.json()["id"]] = image
    on_new_shards = [i for i in stored if hashing.owner(i, cluster.shards("dc-a")) != "s0"]
    assert len(on_new_shards) >= 12, "the new shards should own most of them"
    for image_id in on_new_shards:
        answer = requests.get(f"{stale.url}/v1/images/{image_id}", timeout=10)
        assert answer.status_code == 200 and answer.content == stored[image_id], answer.status_code
    unknown = hashlib.sha256(b"never uploaded").hexdigest()
    assert requests.get(f"{stale.url}/v1/images/{unknown}", timeout=10).status_code == 404
