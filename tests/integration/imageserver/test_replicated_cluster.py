"""Sharding, replication and durability with real processes: storage nodes in two
datacenters, a frontend in each, and crashes in the middle of the traffic."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import samples
from clusters import eventually, metric, start_cluster
from servers import WRITER, Processes, server_errors

from imageserver import hashing


def test_acknowledged_uploads_survive_sigkill_of_a_storage_node_mid_stream(
    imageserver: Processes, tmp_path: Path
) -> None:
    cluster = start_cluster(imageserver, tmp_path, ("dc-a", "dc-b"), shards=3, replicas=2, quorum=2)
    images = [samples.jpeg(96, 64, seed=i, quality=80) for i in range(500)]
    victim = cluster.storage[("dc-a", "s1", 0)]
    acknowledged: dict[str, bytes] = {}
    refused: Counter[int] = Counter()
    done = threading.Semaphore(0)
    lock = threading.Lock()
    session = requests.Session()

    def upload(i: int) -> None:
        frontend = cluster.frontends[("dc-a", "dc-b")[i % 2]]
        try:
            answer = session.post(f"{frontend.url}/v1/images", data=images[i], timeout=30)
            with lock:
                if answer.status_code == 201:
                    acknowledged[answer.json()["id"]] = images[i]
                else:
                    refused[answer.status_code] += 1
                    assert answer.headers.get("Retry-After") == "1"
        finally:
            done.release()

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(upload, i) for i in range(len(images))]
        for _ in range(150):
            done.acquire()
        victim.kill()  # mid-stream: writes to it are in flight
        for future in futures:
            future.result()

    print(f"acknowledged {len(acknowledged)} of 500; refused {dict(refused)}")
    assert set(refused) <= {503}, refused
    assert len(acknowledged) + sum(refused.values()) == 500
    assert len(acknowledged) >= 300, f"only {len(acknowledged)} acknowledged"
    assert all(hashlib.sha256(data).hexdigest() == image_id for image_id, data in acknowledged.items())

    # Every acknowledged image, byte-exact, from both datacenters (the victim still down).
    for frontend in cluster.frontends.values():
        for image_id, data in acknowledged.items():
            answer = session.get(f"{frontend.url}/v1/images/{image_id}", timeout=10)
            assert answer.status_code == 200, (frontend.name, image_id, answer.text)
            assert answer.content == data

    # Back from the crash, the victim is given what it missed as images are read.
    imageserver.restart(victim)
    owned = [i for i in acknowledged if hashing.owner(i, cluster.shards("dc-a")) == "s1"]
    for image_id in owned:
        assert (
            session.get(f"{cluster.frontends['dc-a'].url}/v1/images/{image_id}", timeout=10).status_code
            == 200
        )

    def victim_has_all() -> bool:
        return all(session.head(f"{victim.url}/v1/blobs/{i}", timeout=5).status_code == 200 for i in owned)

    assert eventually(victim_has_all), "read repair did not restore the restarted replica"
    assert metric(cluster.frontends["dc-a"], "imageserver_read_repairs_total") >= 1


def test_a_replica_that_lost_a_blob_is_repaired_on_read(imageserver: Processes, tmp_path: Path) -> None:
    cluster = start_cluster(imageserver, tmp_path, ("dc-a",), shards=1, replicas=3, quorum=2)
    data = samples.jpeg(120, 80, seed=99)
    image_id = requests.post(f"{cluster.frontends['dc-a'].url}/v1/images", data=data, timeout=30).json()["id"]
    lost = tmp_path / "dc-a-s0-2" / "objects" / image_id[:2] / image_id
    assert lost.exists()
    lost.unlink()
    for _ in range(3):
        answer = requests.get(f"{cluster.frontends['dc-a'].url}/v1/images/{image_id}", timeout=10)
        assert answer.content == data
    assert eventually(lost.exists), "the replica was not repaired"
    assert lost.read_bytes() == data


def test_a_new_shard_in_the_topology_is_used_without_a_restart(
    imageserver: Processes, tmp_path: Path
) -> None:
    cluster = start_cluster(imageserver, tmp_path, ("dc-a",), shards=2, replicas=1, quorum=1)
    frontend = cluster.frontends["dc-a"]
    before = {}
    for seed in range(60):
        data = samples.jpeg(64, 48, seed=1000 + seed)
        before[requests.post(f"{frontend.url}/v1/images", data=data, timeout=30).json()["id"]] = data

    cluster.add_storage("dc-a", "s2", 0, tmp_path)
    cluster.write_topology(generation=2)
    assert eventually(lambda: metric(frontend, "imageserver_topology_generation") == 2)

    # Images now owned by s2 are still found on their old shard, and repaired onto s2.
    moved = [i for i in before if hashing.owner(i, ["s0", "s1", "s2"]) == "s2"]
    assert 5 <= len(moved) <= 40
    for image_id, data in before.items():
        assert requests.get(f"{frontend.url}/v1/images/{image_id}", timeout=10).content == data
    new_node = cluster.storage[("dc-a", "s2", 0)]
    assert eventually(
        lambda: all(
            requests.head(f"{new_node.url}/v1/blobs/{i}", timeout=5).status_code == 200 for i in moved
        )
    )
    # New uploads that hash to s2 land there directly.
    fresh = [samples.jpeg(64, 48, seed=5000 + s) for s in range(30)]
    for data in fresh:
        image_id = requests.post(f"{frontend.url}/v1/images", data=data, timeout=30).json()["id"]
        if hashing.owner(image_id, ["s0", "s1", "s2"]) == "s2":
            assert requests.head(f"{new_node.url}/v1/blobs/{image_id}", timeout=5).status_code == 200


def test_a_frontend_is_not_ready_until_it_has_a_topology(imageserver: Processes, tmp_path: Path) -> None:
    topology = tmp_path / "later.json"
    frontend = imageserver.start("frontend", "--topology", str(topology), "--datacenter", "dc-a")
    answer = requests.get(f"{frontend.url}/readyz", timeout=5)
    assert answer.status_code == 503 and "no topology loaded yet" in answer.text
    refused = requests.post(f"{frontend.url}/v1/images", data=samples.jpeg(32, 32), timeout=10)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    storage = imageserver.start("storage", "--data", str(tmp_path / "s"), "--datacenter", "dc-a")
    topology.write_text(
        json.dumps(
            {
                "writeQuorum": 1,
                "datacenters": [{"name": "dc-a", "shards": [{"name": "s0", "replicas": [storage.url]}]}],
            }
        )
    )
    assert eventually(lambda: requests.get(f"{frontend.url}/readyz", timeout=5).status_code == 200, 5)


@pytest.mark.parametrize("mode", ["sync"])
def test_sync_mode_acknowledges_only_after_every_datacenter_has_a_quorum(
    imageserver: Processes, tmp_path: Path, mode: str
) -> None:
    cluster = start_cluster(imageserver, tmp_path, ("dc-a", "dc-b"), shards=1, replicas=1, quorum=1)
    document = cluster.document(generation=2)
    document["crossDatacenter"] = mode
    cluster.topology.write_text(json.dumps(document))
    frontend = cluster.frontends["dc-a"]
    assert eventually(lambda: metric(frontend, "imageserver_topology_generation") == 2)
    data = samples.jpeg(64, 48, seed=77)
    image_id = requests.post(f"{frontend.url}/v1/images", data=data, timeout=30).json()["id"]
    remote = cluster.storage[("dc-b", "s0", 0)]
    assert requests.get(f"{remote.url}/v1/blobs/{image_id}", timeout=5).content == data  # already there
    remote.kill()
    refused = requests.post(f"{frontend.url}/v1/images", data=samples.jpeg(64, 48, seed=78), timeout=30)
    assert refused.status_code == 503
    assert "synchronous copy to dc-b did not reach its quorum" in refused.json()["error"]


def test_storage_node_paths_cannot_be_escaped(imageserver: Processes, tmp_path: Path) -> None:
    node = imageserver.start("storage", "--data", str(tmp_path / "node"), "--datacenter", "dc-a")
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the store")
    for name in (
        "..%2F..%2Fsecret.txt",
        "..%2Fnode%2Fobjects",
        "%2e%2e",
        "a" * 64 + "%2F..%2F..%2Fsecret.txt",
    ):
        answer = requests.get(f"{node.url}/v1/blobs/{name}", timeout=5)
        assert answer.status_code in (400, 404), (name, answer.status_code)
        assert "outside the store" not in answer.text
        put = requests.put(f"{node.url}/v1/blobs/{name}", data=b"x", headers=WRITER, timeout=5)
        assert put.status_code in (400, 404)
    wrong = requests.put(
        f"{node.url}/v1/blobs/{'ab' * 32}", data=b"not those bytes", headers=WRITER, timeout=5
    )
    assert wrong.status_code == 400 and "does not match" in wrong.json()["error"]
    assert server_errors(node.url) == 0
