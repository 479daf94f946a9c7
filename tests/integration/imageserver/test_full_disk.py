"""A storage node whose disk is full says so (507, not ready, a metric) and the frontend
relies on the shard's other replicas: no 500, and 503 with Retry-After only once the write
quorum cannot be met. The disks are small tmpfs mounts made by the test."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import samples
from clusters import Cluster, metric, start_cluster
from servers import WRITER, Processes, Server

RESERVE = 256 << 10
LARGEST = 256 << 10  # the largest blob the storage nodes take: readiness keeps room for one


@pytest.fixture
def small_disks(tmp_path: Path) -> Iterator[list[Path]]:
    """Two tmpfs volumes, 3 MiB and 6 MiB, unmounted at the end."""
    disks = []
    try:
        for i, size in enumerate(("3m", "6m")):
            disk = tmp_path / f"disk{i}"
            disk.mkdir()
            mounted = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                check=False,
                capture_output=True,
                text=True,
            )
            if mounted.returncode != 0:
                pytest.skip(f"mounting a tmpfs needs root: {mounted.stderr.strip()}")
            disks.append(disk)
        yield disks
    finally:
        for disk in disks:
            subprocess.run(["umount", "-l", str(disk)], check=False)


def _upload_until(
    cluster: Cluster,
    done: Callable[[int], bool],
    seen: Counter[int],
    acknowledged: dict[str, bytes],
    start: int,
) -> int:
    """Upload distinct images until `done(status)` (at most 400); returns the next seed."""
    for seed in range(start, start + 400):
        image = samples.jpeg(320, 240, seed=seed)
        answer = requests.post(f"{cluster.frontends['dc-a'].url}/v1/images", data=image, timeout=30)
        seen[answer.status_code] += 1
        if answer.status_code == 201:
            acknowledged[answer.json()["id"]] = image
        if answer.status_code == 503:
            assert answer.headers.get("Retry-After") and "replicas stored" in answer.json()["error"]
        if done(answer.status_code):
            return seed + 1
    raise AssertionError(f"still going after 400 uploads: {dict(seen)}")


def test_a_full_disk_answers_507_and_the_other_replicas_take_the_writes(
    imageserver: Processes, tmp_path: Path, small_disks: list[Path]
) -> None:
    cluster = start_cluster(
        imageserver,
        tmp_path,
        ("dc-a",),
        shards=1,
        replicas=3,
        quorum=2,
        storage_env={"IMAGESERVER_DISK_RESERVE": str(RESERVE), "IMAGESERVER_MAX_UPLOAD_BYTES": str(LARGEST)},
    )
    # Replicas 0 and 1 move onto the small disks.
    for replica, disk in enumerate(small_disks):
        server = cluster.storage[("dc-a", "s0", replica)]
        server.kill()
        data = server.argv.index("--data") + 1
        server.argv[data] = str(disk)
        imageserver.restart(server)
    small = cluster.storage[("dc-a", "s0", 0)]
    assert metric(small, "imageserver_storage_capacity_bytes") == 3 << 20
    seen: Counter[int] = Counter()
    acknowledged: dict[str, bytes] = {}
    seed = _upload_until(cluster, lambda _: not _ready(small), seen, acknowledged, 0)
    assert requests.get(f"{small.url}/readyz", timeout=5).status_code == 503
    assert "disk full" in requests.get(f"{small.url}/readyz", timeout=5).text
    assert metric(small, "imageserver_storage_free_bytes") < RESERVE + LARGEST
    blob = os.urandom(LARGEST)  # the largest blob it takes no longer fits above the reserve
    name = hashlib.sha256(blob).hexdigest()
    refused = requests.put(f"{small.url}/v1/blobs/{name}", data=blob, headers=WRITER, timeout=5)
    assert refused.status_code == 507, refused.text
    # Two replicas left, W = 2: uploads go on until the second small disk fills too, and then
    # the quorum cannot be met: 503 with Retry-After, never a 500.
    before = seen[201]
    _upload_until(cluster, lambda status: status == 503, seen, acknowledged, seed)
    assert seen[201] > before, seen
    assert not _ready(cluster.storage[("dc-a", "s0", 1)])
    print(dict(seen))
    assert set(seen) <= {201, 503}, seen
    # The frontend stays ready (reads work), and every acknowledged image is still there.
    frontend = cluster.frontends["dc-a"].url
    assert requests.get(f"{frontend}/readyz", timeout=5).status_code == 200
    for image_id, image in acknowledged.items():
        assert requests.get(f"{frontend}/v1/images/{image_id}", timeout=10).content == image


def _ready(server: Server) -> bool:
    return requests.get(f"{server.url}/readyz", timeout=5).status_code == 200
