"""`make bench-capacity`: the per-unit costs the capacity planner multiplies the load by,
measured on this machine, written where the operator reads its defaults
(operator/imageserver_operator/api/unit_costs.json) with the machine and the date.

  render seconds per megapixel    one fit-in variant of the default allowlist from a 6 MP
                                  JPEG, in-process, one thread, CPU time
  variant bytes per megapixel     the same renders' encoded bytes over their pixels
  cached reads per core second    a frontend answering allowlisted variants from its cache
                                  (wrk), over the frontend process's CPU time
  original reads per core second  a frontend answering originals, fetched from its storage
                                  node, over the frontend process's CPU time
  ingest seconds per megabyte     a frontend's CPU per uploaded megabyte beyond the request
                                  and the renders (uploads through wrk, less the two above)
  storage writes per second       distinct small blobs (30 kB) one storage node makes durable
                                  per second (fsync'd, 8 writers), and bytes per second with
                                  large ones (1.5 MB)
  frontend base memory            an idle frontend's resident memory

Each figure is the median of three runs, shown beside the lowest and highest: the spread
says how much to trust it. The peer is the same cost without our code where there is one
(plain Pillow renders beside our draft-mode ones; os.fsync of the same blobs beside the
storage node).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import requests
from clusters import start_cluster
from imageserver_bench import LUA_UPLOAD, _lua_list, corpus, rotate, wrk
from PIL import Image
from servers import WRITER, Processes

from imageserver import imaging, variants
from imageserver.imaging import Limits
from imageserver.variants import Variant
from testbed.paths import REPO_ROOT
from testbed.progress import say

OUT = REPO_ROOT / "operator" / "imageserver_operator" / "api" / "unit_costs.json"
RUNS = 3
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def median_of(runs: int, measure: Callable[[], float]) -> tuple[float, float, float]:
    values = [measure() for _ in range(runs)]
    return float(statistics.median(values)), min(values), max(values)


def machine() -> str:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({model or platform.machine()}), {platform.system()} {platform.release()}"


def render_costs(originals: list[bytes]) -> tuple[Callable[[], float], Callable[[], float], list[float]]:
    """CPU seconds per source megapixel of one allowlisted variant; the peer: the same renders
    in plain Pillow, without draft mode's DCT scaling (decode in full, Lanczos, encode)."""
    limits = Limits()
    sizes = variants.default_allowlist()
    out_bytes: list[float] = []

    def ours() -> float:
        pixels, spent = 0.0, 0.0
        for data in originals:
            info = imaging.probe(data, limits)
            for size in sizes:
                started = time.process_time()
                encoded, _ = imaging.render(data, Variant(size), limits, info)
                spent += time.process_time() - started
                pixels += info.width * info.height / 1e6
                width, height = imaging.fit_within(info.width, info.height, size)
                out_bytes.append(len(encoded) / (width * height / 1e6))
        return spent / pixels

    def without_draft() -> float:
        pixels, spent = 0.0, 0.0
        for data in originals:
            for size in sizes:
                started = time.process_time()
                with Image.open(BytesIO(data)) as image:
                    target = imaging.fit_within(image.width, image.height, size)
                    out = BytesIO()
                    image.convert("RGB").resize(target, Image.Resampling.LANCZOS).save(
                        out, "JPEG", quality=85
                    )
                    pixels += image.width * image.height / 1e6
                spent += time.process_time() - started
        return spent / pixels

    return ours, without_draft, out_bytes


def frontend_cost(pid: int, url: str, script: str, seconds: int, connections: int) -> float:
    """CPU seconds of the frontend process per request under wrk's load."""
    before = cpu_seconds(pid)
    rps, _, _, errors = wrk(url, script, seconds=seconds, connections=connections, warmup=0)
    spent = cpu_seconds(pid) - before
    if errors:
        raise RuntimeError(f"{errors} errors under load: the cost would be wrong")
    return spent / (rps * seconds)


def storage_writes(url: str, size: int, seconds: float, writers: int = 8) -> float:
    """Distinct blobs of `size` bytes a storage node makes durable per second."""
    stop = time.monotonic() + seconds
    base = os.urandom(size)
    counter = iter(range(10**9))
    lock = threading.Lock()

    def writer() -> int:
        done = 0
        with requests.Session() as session:
            while time.monotonic() < stop:
                with lock:
                    n = next(counter)
                data = base + n.to_bytes(8, "big")
                name = hashlib.sha256(data).hexdigest()
                answer = session.put(f"{url}/v1/blobs/{name}", data=data, headers=WRITER, timeout=30)
                answer.raise_for_status()
                done += 1
        return done

    started = time.monotonic()
    with ThreadPoolExecutor(writers) as pool:
        total = sum(pool.map(lambda _: writer(), range(writers)))
    return total / (time.monotonic() - started)


def raw_fsync(directory: Path, size: int, seconds: float) -> float:
    """The same blobs written and fsync'd by a bare loop: the disk's own rate (the peer)."""
    data = os.urandom(size)
    stop = time.monotonic() + seconds
    done = 0
    started = time.monotonic()
    while time.monotonic() < stop:
        path = directory / f"raw-{done}"
        with open(path, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        path.unlink()
        done += 1
    return done / (time.monotonic() - started)


def ensure_wrk() -> None:
    if shutil.which("wrk") is None:
        say("installing wrk from Debian")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )


def run(seconds: int, count: int) -> tuple[dict[str, float | str], list[tuple[str, str, str, str]]]:
    ensure_wrk()
    files = corpus(count)
    originals = [f.read_bytes() for f in files]
    rows: list[tuple[str, str, str, str]] = []

    def row(name: str, figure: tuple[float, float, float], unit: str, peer: str = "") -> float:
        mid, low, high = figure
        rows.append((name, f"{mid:.4g} {unit}", f"{low:.4g} … {high:.4g}", peer))
        return mid

    say("render: in-process, one thread")
    ours, without_draft, out_bytes = render_costs(originals)
    render = median_of(RUNS, ours)
    decode = median_of(RUNS, without_draft)
    render_s = row(
        "render seconds per megapixel",
        render,
        "s/MP",
        f"the same renders without draft mode {decode[0]:.4g} s/MP: "
        f"ours = {decode[0] / render[0]:.2f}x cheaper",
    )
    variant_bytes = row(
        "variant bytes per megapixel",
        (statistics.median(out_bytes), min(out_bytes), max(out_bytes)),
        "B/MP",
    )
    work = Path(tempfile.mkdtemp(prefix="imageserver-capacity-"))
    processes = Processes(work / "processes")
    try:
        cluster = start_cluster(processes, work, ("dc-a",), shards=1, replicas=1, quorum=1)
        frontend = cluster.frontends["dc-a"]
        pid = frontend.managed.pid
        time.sleep(1)
        base_memory = rss_bytes(pid)  # one reading: an idle process does not vary
        rows.append(
            ("frontend base memory (idle, before any request)", f"{base_memory:.4g} B", "one reading", "")
        )
        ids = []
        for data in originals:
            answer = requests.post(f"{frontend.url}/v1/images", data=data, timeout=60)
            answer.raise_for_status()
            ids.append(answer.json()["id"])
        cached = [f"/v1/images/{i}?w=300&h=300" for i in ids]
        say("cached reads: wrk on the frontend")
        wrk(frontend.url, rotate(cached), seconds=1, connections=4, warmup=0)  # fill the cache
        read = median_of(RUNS, lambda: 1 / frontend_cost(pid, frontend.url, rotate(cached), seconds, 4))
        cached_rate = row("cached reads per core second", read, "req/core-s")
        say("original reads: wrk on the frontend")
        original = median_of(
            RUNS,
            lambda: (
                1 / frontend_cost(pid, frontend.url, rotate([f"/v1/images/{i}" for i in ids]), seconds, 8)
            ),
        )
        original_rate = row("original reads per core second", original, "req/core-s")
        say("uploads: wrk on the frontend")
        script = LUA_UPLOAD % (_lua_list([str(f) for f in files]), "")
        megabytes = statistics.mean(len(d) for d in originals) / 1e6
        # What an upload's renders cost on the upload path (one decode for every size).
        started = time.process_time()
        for data in originals:
            imaging.render_allowlisted(data, variants.default_allowlist(), Limits())
        renders = (time.process_time() - started) / len(originals)

        def ingest() -> float:
            per_upload = frontend_cost(pid, frontend.url, script, seconds, 4)
            left = per_upload - 1 / cached_rate - renders
            if left <= 0:
                raise RuntimeError(
                    f"an upload cost {per_upload * 1000:.1f} ms of frontend CPU, no more than its request "
                    f"and renders ({(1 / cached_rate + renders) * 1000:.1f} ms): the noise is larger than "
                    "the figure; measure longer (--seconds)"
                )
            return left / megabytes

        ingest_s = row("ingest seconds per megabyte", median_of(RUNS, ingest), "s/MB")
        storage = next(iter(cluster.storage.values()))
        say("storage writes: 8 writers on one storage node")
        small = median_of(RUNS, lambda: storage_writes(storage.url, 30_000, seconds / 2))
        raw_small = raw_fsync(work, 30_000, seconds / 2)
        writes = row(
            "storage writes per second",
            small,
            "writes/s",
            f"bare fsync loop {raw_small:.4g}/s: ours = {small[0] / raw_small:.2f}x",
        )
        large_size = 1_500_000
        large = median_of(RUNS, lambda: storage_writes(storage.url, large_size, seconds / 2) * large_size)
        raw_large = raw_fsync(work, large_size, seconds / 2) * large_size
        write_bytes = row(
            "storage write bytes per second",
            large,
            "B/s",
            f"bare fsync loop {raw_large:.4g} B/s: ours = {large[0] / raw_large:.2f}x",
        )
    finally:
        processes.stop_all()
    costs: dict[str, float | str] = {
        "renderSecondsPerMegapixel": significant(render_s),
        "variantBytesPerMegapixel": significant(variant_bytes),
        "ingestSecondsPerMegabyte": significant(ingest_s),
        "cachedReadsPerCoreSecond": significant(cached_rate),
        "originalReadsPerCoreSecond": significant(original_rate),
        "storageWritesPerSecond": significant(writes),
        "storageWriteBytesPerSecond": significant(write_bytes),
        "frontendBaseMemoryBytes": significant(base_memory),
        "measuredBy": f"make bench-capacity (bench/capacity_bench.py, {seconds} s runs, median of {RUNS})",
        "machine": machine(),
        "measuredAt": datetime.now(UTC).date().isoformat(),
    }
    return costs, rows


def significant(value: float) -> float:
    """Three significant figures: what a median of three runs can claim."""
    return float(f"{value:.3g}")


def table(rows: list[tuple[str, str, str, str]]) -> str:
    lines = ["| unit cost | median | lowest … highest | peer |", "|---|---:|---:|---|"]
    lines += [f"| {a} | {b} | {c} | {d or '—'} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=4, help="each load run")
    parser.add_argument("--images", type=int, default=8, help="corpus size")
    parser.add_argument("--out", type=Path, default=OUT, help="where the costs go (the operator's defaults)")
    args = parser.parse_args()
    costs, rows = run(args.seconds, args.images)
    args.out.write_text(json.dumps(costs, indent=2) + "\n")
    print(table(rows))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
