"""Moving data between storage nodes, against the disk's own limit for the same work.

Two scenarios on one machine, in one run, on the same images (small JPEGs with their two
allowlisted variants: three files each):

- rebalance: a shard is added to a one-shard datacenter; the old node sends every image the
  new shard now owns (HEAD, three PUTs, removal) — images a second until none is left.
- handoff: a second datacenter is unreachable while the images are uploaded, then comes up;
  the first datacenter's storage node delivers the copies it owes — images a second until
  none is owed.

Peer: the same three files per image copied by a plain local copy that is as durable as a
storage node's write (write, fsync, rename, directory fsync), in one thread: what the disk
allows for the same bytes with no HTTP, no checks and no concurrency.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import requests
import samples
from servers import Processes, Server

FAST = {
    "IMAGESERVER_REBALANCE_SETTLE": "0",
    "IMAGESERVER_REBALANCE_RATE": "100000",
    "IMAGESERVER_REBALANCE_INTERVAL": "0.2",
    "IMAGESERVER_HANDOFF_MAX_BACKOFF": "1",
}


def metric(server: Server, name: str) -> float:
    for line in requests.get(f"{server.url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def write_map(path: Path, datacenters: dict[str, dict[str, list[str]]], generation: int) -> None:
    document = {
        "generation": generation,
        "writeQuorum": 1,
        "datacenters": [
            {"name": dc, "shards": [{"name": s, "replicas": urls} for s, urls in shards.items()]}
            for dc, shards in datacenters.items()
        ],
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document))
    tmp.replace(path)


def wait_for(what: str, check: object, timeout: float = 600) -> float:
    started = time.monotonic()
    while not check():  # type: ignore[operator]
        if time.monotonic() - started > timeout:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def durable_copy(files: list[Path], target: Path) -> float:
    """The peer: each file written, fsynced, renamed and its directory fsynced; seconds taken."""
    target.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for source in files:
        temp = target / f"{source.name}.tmp"
        with open(source, "rb") as read, open(temp, "wb") as out:
            shutil.copyfileobj(read, out)
            out.flush()
            os.fsync(out.fileno())
        temp.replace(target / source.name)
        directory = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(directory)
        os.close(directory)
    return time.monotonic() - started


def run(images: int, work: Path) -> list[tuple[str, str, float, str]]:
    processes = Processes(work / "processes")
    topology = work / "topology.json"
    try:
        old = processes.start(
            "storage",
            "--data",
            str(work / "s0"),
            "--datacenter",
            "dc-a",
            "--topology",
            str(topology),
            "--shard",
            "s0",
            env=FAST,
        )
        dead = "http://127.0.0.1:9"
        write_map(topology, {"dc-a": {"s0": [old.url]}, "dc-b": {"s0": [dead]}}, 1)
        frontend = processes.start("frontend", "--topology", str(topology), "--datacenter", "dc-a")
        session = requests.Session()
        print(f"uploading {images} images …", file=sys.stderr)
        for i in range(images):
            answer = session.post(
                f"{frontend.url}/v1/images", data=samples.jpeg(160, 120, seed=i), timeout=30
            )
            answer.raise_for_status()
        files = [p for p in (work / "s0" / "objects").glob("*/*")]
        peer = durable_copy(files, work / "peer")

        # Handoff: dc-b comes up.
        remote = processes.start("storage", "--data", str(work / "b0"), "--datacenter", "dc-b", env=FAST)
        owed = metric(old, "imageserver_replication_pending")
        write_map(topology, {"dc-a": {"s0": [old.url]}, "dc-b": {"s0": [remote.url]}}, 2)
        handoff = wait_for("handoff", lambda: metric(old, "imageserver_replication_pending") == 0)

        # Rebalance: a second shard in dc-a.
        new = processes.start(
            "storage",
            "--data",
            str(work / "s1"),
            "--datacenter",
            "dc-a",
            "--topology",
            str(topology),
            "--shard",
            "s1",
            env=FAST,
        )
        moved_before = metric(old, "imageserver_rebalance_moved_total")
        write_map(topology, {"dc-a": {"s0": [old.url], "s1": [new.url]}, "dc-b": {"s0": [remote.url]}}, 3)
        wait_for("rebalance start", lambda: metric(old, "imageserver_rebalance_moved_total") > moved_before)
        rebalance = wait_for("rebalance", lambda: metric(old, "imageserver_rebalance_remaining") == 0)
        moved = metric(old, "imageserver_rebalance_moved_total") - moved_before

        per_image = len(files) / images
        peer_rate = len(files) / per_image / peer
        rows = [
            ("handoff", f"{owed:.0f} copies owed to a datacenter that came back", owed / handoff, ""),
            ("rebalance", f"{moved:.0f} images to a new shard's owner", moved / rebalance, ""),
            ("peer", f"durable local copy of the same files ({per_image:.1f} per image)", peer_rate, ""),
        ]
        return [
            (name, what, rate, "" if name == "peer" else f"{rate / peer_rate:.2f} x peer")
            for name, what, rate, _ in rows
        ]
    finally:
        processes.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rebalance-bench-") as work:
        rows = run(args.images, Path(work))
    print("| scenario | what | images/s | ratio |")
    print("|---|---|---:|---|")
    for name, what, rate, ratio in rows:
        print(f"| {name} | {what} | {rate:.1f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
