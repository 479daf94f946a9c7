"""`make bench`: the data plane side by side with its peers, on one corpus, in one run.

  (a) allowlisted variant GET (300x300)      vs thumbor 7, uncached fit-in/300x300
  (b) signed on-demand variant, uncached,    vs thumbor 7, uncached, the same crop and
      each engine (--engine pillow|vips):       format, and each engine's raw limit measured
      300x200 and 1200x800 cover in JPEG,       in this run; and the peak RSS of each server
      300x200 in WebP and AVIF                  under this load
  (c) original GET                           vs nginx serving the same files (sendfile)
  (d) uploads of 6 MP JPEGs (variants rendered, written to R=2 replicas, W=2, copied to a
      second datacenter)                     vs the raw Pillow cost of the same rendering
  (e) well-behaved clients uploading 1 MP JPEGs to a server with a 512 MB limit, under the
      attack mix (stalled 20 MB uploads, PNG bombs, bombs whose clients hang up)
                                             vs the same clients with no attack

Load comes from wrk on 127.0.0.1. Servers get the same processes (1) and render threads
(2) as thumbor. Results: a table on stdout and in bench/out/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import attacks
import requests
import samples
from servers import SIGNING_KEY, Processes, Server

from imageserver import imaging, variants
from imageserver.imaging import Limits
from imageserver.variants import Size, Variant
from testbed.paths import REPO_ROOT, cache_dir
from testbed.processes import State, free_port, spawn, stop, wait_until
from testbed.progress import say

THUMBOR = "thumbor>=7,<8"
CORPUS_SIZE = (3000, 2000)  # 6 MP


@dataclass
class Result:
    scenario: str
    server: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    case: str = ""  # rows of one scenario and case are compared with each other


# (b): what is asked of every server (query of ours, thumbor's path before the file name).
COVERS = [
    ("300x200 cover, JPEG", {"w": "300", "h": "200", "fit": "cover"}, "300x200"),
    ("1200x800 cover, JPEG", {"w": "1200", "h": "800", "fit": "cover"}, "1200x800"),
    (
        "300x200 cover, WebP",
        {"w": "300", "h": "200", "fit": "cover", "format": "webp"},
        "300x200/filters:format(webp)",
    ),
    (
        "300x200 cover, AVIF",
        {"w": "300", "h": "200", "fit": "cover", "format": "avif"},
        "300x200/filters:format(avif)",
    ),
]


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def ensure_peers() -> Path:
    """wrk and nginx from Debian, thumbor 7 from PyPI into its own virtualenv."""
    missing = [p for p, binary in (("wrk", "wrk"), ("nginx-light", "nginx")) if shutil.which(binary) is None]
    if missing:
        say(f"installing {', '.join(missing)} from Debian")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    venv = cache_dir() / "bench" / "thumbor-venv"
    if not (venv / "bin" / "thumbor").exists():
        say("installing thumbor 7 into its own virtualenv")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", THUMBOR], check=True)
    return venv


def corpus(count: int) -> list[Path]:
    directory = cache_dir() / "bench" / f"corpus-{CORPUS_SIZE[0]}x{CORPUS_SIZE[1]}-{count}"
    directory.mkdir(parents=True, exist_ok=True)
    files = [directory / f"photo-{i:02d}.jpg" for i in range(count)]
    todo = [f for f in files if not f.exists()]
    if todo:
        say(f"making {len(todo)} photo-like 6 MP JPEGs (deterministic, cached)")
        with ThreadPoolExecutor(2) as pool:
            for path, data in zip(
                todo, pool.map(lambda f: samples.jpeg(*CORPUS_SIZE, seed=int(f.stem[-2:])), todo), strict=True
            ):
                path.write_bytes(data)
    return files


# -- wrk --------------------------------------------------------------------------------------

LUA_ROTATE = """
paths = {%s}
counter = 0
setup = function(thread) thread:set("offset", math.random(1, #paths)) end
request = function()
  counter = counter + 1
  return wrk.format(%s, paths[((counter + (offset or 0)) %% #paths) + 1], %s, %s)
end
"""
LUA_UPLOAD = """
bodies = {}
for _, name in ipairs({%s}) do
  local f = io.open(name, "rb"); bodies[#bodies + 1] = f:read("*all"); f:close()
end
counter = 0
setup = function(thread) thread:set("seed", math.random(1, 1000000)) end
request = function()
  counter = counter + 1
  -- Bytes after the JPEG end marker are ignored by decoders but give every upload a new id.
  local body = bodies[(counter %% #bodies) + 1] .. "upload-" .. (seed or 0) .. "-" .. counter
  return wrk.format("POST", "/v1/images", {["Content-Type"] = "image/jpeg"%s}, body)
end
"""


def _lua_list(items: list[str]) -> str:
    return ", ".join(json.dumps(item) for item in items)


def _number(pattern: str, out: str) -> re.Match[str]:
    match = re.search(pattern, out, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"cannot read {pattern!r} in wrk's output:\n{out}")
    return match


def _percentile_ms(percent: int, out: str) -> float:
    value, unit = _number(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s|m)\s*$", out).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(
    base: str, script: str, *, seconds: int, connections: int, warmup: int = 2
) -> tuple[float, float, float, int]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(script)
    try:

        def run(duration: int) -> str:
            return subprocess.run(
                [
                    "wrk",
                    "-t2",
                    f"-c{connections}",
                    f"-d{duration}s",
                    "--latency",
                    "--timeout",
                    "30s",
                    "-s",
                    lua.name,
                    base,
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout

        if warmup:
            run(warmup)
        out = run(seconds)
    finally:
        Path(lua.name).unlink()
    rps = float(_number(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50, p99 = _percentile_ms(50, out), _percentile_ms(99, out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    count = int(errors.group(1)) if errors else 0
    if socket_errors:
        count += sum(int(g) for g in socket_errors.groups())
    return rps, p50, p99, count


def rotate(paths: list[str], method: str = "nil") -> str:
    return LUA_ROTATE % (_lua_list(paths), method if method == "nil" else json.dumps(method), "nil", "nil")


# -- peers ------------------------------------------------------------------------------------


def start_thumbor(state: State, venv: Path, root: Path) -> str:
    port = free_port()
    conf = state.directory / "thumbor.conf"
    conf.write_text(
        f"LOADER = 'thumbor.loaders.file_loader'\n"
        f"FILE_LOADER_ROOT_PATH = {str(root)!r}\n"
        "STORAGE = 'thumbor.storages.no_storage'\n"
        "RESULT_STORAGE = None\n"
        "ENGINE_THREADPOOL_SIZE = 2\n"
        "QUALITY = 85\n"
        "RESPECT_ORIENTATION = True\n"
        "ALLOW_UNSAFE_URL = True\n"
        "SECURITY_KEY = 'bench-only-key'\n"
    )
    managed = spawn(
        state,
        "thumbor",
        [
            str(venv / "bin" / "thumbor"),
            "-p",
            str(port),
            "-i",
            "127.0.0.1",
            "-c",
            str(conf),
            "--processes",
            "1",
            "-l",
            "warning",
        ],
    )
    url = f"http://127.0.0.1:{port}"
    wait_until("thumbor", lambda: _ok(f"{url}/healthcheck"), managed, 60)
    return url


def start_nginx(state: State, root: Path) -> str:
    port = free_port()
    prefix = state.directory / "nginx"
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(
        f"{user}worker_processes 1;\ndaemon off;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n"
        "events { worker_connections 1024; }\n"
        "http {\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 1000000;\n"
        f"  client_body_temp_path {prefix}/tmp;\n  types {{ image/jpeg jpg; }}\n"
        f"  server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n"
    )
    managed = spawn(state, "nginx", ["nginx", "-p", str(prefix), "-c", str(conf)])
    url = f"http://127.0.0.1:{port}"
    wait_until("nginx", lambda: _ok(f"{url}/photo-00.jpg"), managed, 20)
    return url


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def raw_pillow_rate(work: Callable[[bytes], object], images: list[bytes], seconds: float) -> float:
    """Operations per second of `work` on 2 threads, nothing else running: the ceiling."""
    deadline = time.monotonic() + seconds
    done = 0

    def loop(offset: int) -> int:
        count = 0
        while time.monotonic() < deadline:
            work(images[(offset + count) % len(images)])
            count += 1
        return count

    with ThreadPoolExecutor(2) as pool:
        done = sum(pool.map(loop, [0, len(images) // 2]))
    return done / seconds


# -- the run ----------------------------------------------------------------------------------


def run(seconds: int, count: int, only: str = "abcde") -> tuple[list[Result], dict[str, float]]:
    """Every scenario's results, and the peak RSS (MB) of each server under the (b) load."""
    venv = ensure_peers()
    files = corpus(count)
    originals = [f.read_bytes() for f in files]
    limits = Limits()
    results: list[Result] = []
    work = Path(tempfile.mkdtemp(prefix="imageserver-bench-"))
    state = State(work / "peers")
    state.directory.mkdir(parents=True)
    processes = Processes(work / "processes")
    try:
        ours = processes.start("serve", "--data", str(work / "data"))
        # (b): one uncached server per engine, each its own process (its own peak RSS).
        engines = {
            engine: processes.start(
                "serve", "--data", str(work / "data"), "--cache-bytes", "0", "--engine", engine
            )
            for engine in imaging.ENGINES
        }
        peaks: dict[str, float] = {}
        ids = []
        for data in originals:
            answer = requests.post(f"{ours.url}/v1/images", data=data, timeout=60)
            answer.raise_for_status()
            ids.append(answer.json()["id"])
        thumbor = start_thumbor(state, venv, files[0].parent) if set(only) & {"a", "b"} else ""
        nginx = start_nginx(state, files[0].parent) if "c" in only else ""
        names = [f.name for f in files]

        def measure(
            scenario: str, server: str, base: str, script: str, *, connections: int = 4, case: str = ""
        ) -> None:
            if scenario not in only:
                return
            say(f"{scenario}: {server}" + (f", {case}" if case else ""))
            rps, p50, p99, errors = wrk(base, script, seconds=seconds, connections=connections)
            results.append(Result(scenario, server, rps, p50, p99, errors, case))

        measure(
            "a",
            "imageserver (allowlisted 300x300)",
            ours.url,
            rotate([f"/v1/images/{i}?w=300&h=300" for i in ids]),
        )
        measure(
            "a",
            "thumbor 7 (fit-in/300x300, uncached)",
            thumbor,
            rotate([f"/unsafe/fit-in/300x300/{n}" for n in names]),
        )

        if "b" in only:
            on_demand(
                measure,
                ids=ids,
                names=names,
                engines=engines,
                thumbor=thumbor,
                originals=originals,
                seconds=seconds,
                results=results,
            )
            peaks = {f"imageserver --engine {e}": peak_rss_mb(s.managed.pid) for e, s in engines.items()}
            peaks["thumbor 7"] = peak_rss_mb(state.processes["thumbor"].pid)

        measure(
            "c",
            "imageserver (original, sendfile)",
            ours.url,
            rotate([f"/v1/images/{i}" for i in ids]),
            connections=8,
        )
        measure(
            "c", "nginx 1.22 (same files, sendfile)", nginx, rotate([f"/{n}" for n in names]), connections=8
        )

        if "d" in only:
            cluster = start_upload_cluster(processes, work)
            measure(
                "d",
                "imageserver upload (2 DCs, R=2, W=2)",
                cluster.url,
                LUA_UPLOAD % (_lua_list([str(f) for f in files]), ""),
                connections=4,
            )
            say("d: raw Pillow limit of the upload rendering (2 threads)")
            raw_upload = raw_pillow_rate(
                lambda data: imaging.render_allowlisted(data, variants.default_allowlist(), limits),
                originals,
                seconds,
            )
            results.append(Result("d", "raw Pillow limit of the rendering (2 threads)", raw_upload, 0, 0, 0))
        if "e" in only:
            results.extend(overload(processes, work, seconds))
    finally:
        processes.stop_all()
        for managed in state.processes.values():
            stop(managed)
        shutil.rmtree(work, ignore_errors=True)
    return results, peaks


Measure = Callable[..., None]


def on_demand(
    measure: Measure,
    *,
    ids: list[str],
    names: list[str],
    engines: dict[imaging.Engine, Server],
    thumbor: str,
    originals: list[bytes],
    seconds: int,
    results: list[Result],
) -> None:
    """(b): every cover variant from each engine and from thumbor, then each engine's raw
    limit on the first case (the same work in-process, 2 threads, no HTTP)."""
    key = SIGNING_KEY.encode()
    for case, query, thumbor_path in COVERS:
        signed = []
        for i in ids:
            path = f"/v1/images/{i}"
            signed.append(f"{path}?{urlencode({**query, 'sig': variants.sign(key, path, query)})}")
        for engine, server in engines.items():
            measure(
                "b",
                f"imageserver --engine {engine} (signed, uncached)",
                server.url,
                rotate(signed),
                case=case,
            )
        probe = requests.get(f"{thumbor}/unsafe/{thumbor_path}/{names[0]}", timeout=60)
        if probe.status_code == 200:
            measure(
                "b",
                "thumbor 7 (uncached)",
                thumbor,
                rotate([f"/unsafe/{thumbor_path}/{n}" for n in names]),
                case=case,
            )
        else:
            say(f"b: thumbor 7 cannot make {case} (HTTP {probe.status_code}): no peer for it")
    case, query, _ = COVERS[0]
    cover = Variant(Size(int(query["w"]), int(query["h"])), "cover")
    for engine in imaging.ENGINES:
        say(f"b: raw {engine} limit (same work, in-process, 2 threads)")
        imaging.use_engine(engine)
        raw = raw_pillow_rate(lambda data: imaging.render(data, cover, Limits()), originals, seconds)
        results.append(Result("b", f"raw {engine} limit (2 threads)", raw, 0, 0, 0, case))
    imaging.use_engine("pillow")


def overload(processes: Processes, work: Path, seconds: int) -> list[Result]:
    """(e): the same well-behaved uploaders, alone and beside the attack mix, on one server
    with a 512 MB limit; the server's peak RSS is in the row."""
    server = processes.start(*attacks.guarded(work / "overload", body_idle=5))
    photos = []
    for seed in range(8):
        photo = work / f"small-{seed}.jpg"
        photo.write_bytes(samples.jpeg(1200, 800, seed=100 + seed, quality=85))
        photos.append(str(photo))
    script = LUA_UPLOAD % (_lua_list(photos), f', ["X-Forwarded-For"] = "{attacks.GOOD}"')
    rows = []
    for label, attacked in (("same clients, no attack", False), ("imageserver, under the attack mix", True)):
        say(f"e: {label}")
        stop_attack = threading.Event()
        attackers = threading.Thread(target=attack, args=(server.port, stop_attack), daemon=True)
        if attacked:
            attackers.start()
            time.sleep(1)  # the attack is in full swing before the clients start
        rss = attacks.PeakRss(server.managed.pid)
        rps, p50, p99, errors = wrk(server.url, script, seconds=seconds, connections=4, warmup=0)
        peak = rss.stop()
        stop_attack.set()
        if attacked:
            attackers.join()
        rows.append(Result("e", f"{label} (peak RSS {peak >> 20} MB)", rps, p50, p99, errors))
    return rows[::-1]  # ours first: the ratio is attacked / not attacked


def attack(port: int, stop_attack: threading.Event) -> None:
    """Keeps 50 stalled 20 MB uploads open, and sends bombs from 8 clients and bombs from 8
    clients that hang up at 0.3 s, until told to stop."""
    bomb = attacks.bomb()

    def bomber(identity: str, hang_up: float | None) -> None:
        while not stop_attack.is_set():
            attacks.post(port, bomb, identity, hang_up_after=hang_up)

    def staller() -> None:
        while not stop_attack.is_set():
            upload = attacks.StalledUpload(port, attacks.ATTACKER)
            upload.answer(wait=30)  # until the server cuts it off (or refuses it)
            upload.close()

    with ThreadPoolExecutor(66) as pool:
        for _ in range(50):
            pool.submit(staller)
        for i in range(16):
            pool.submit(bomber, f"198.51.100.{10 + i}", 0.3 if i >= 8 else None)


def start_upload_cluster(processes: Processes, work: Path) -> Server:
    topology = work / "topology.json"
    nodes = {
        (dc, r): processes.start(
            "storage",
            "--data",
            str(work / f"upload-{dc}-{r}"),
            "--datacenter",
            dc,
            "--topology",
            str(topology),
        )
        for dc in ("dc-a", "dc-b")
        for r in range(2)
    }
    topology.write_text(
        json.dumps(
            {
                "writeQuorum": 2,
                "datacenters": [
                    {
                        "name": dc,
                        "shards": [{"name": "s0", "replicas": [nodes[(dc, r)].url for r in range(2)]}],
                    }
                    for dc in ("dc-a", "dc-b")
                ],
            }
        )
    )
    frontend = processes.start("frontend", "--topology", str(topology), "--datacenter", "dc-a")
    wait_until("upload frontend ready", lambda: _ok(f"{frontend.url}/readyz"), None, 10)
    return frontend


def table(results: list[Result]) -> str:
    """Each imageserver row against the peer of its scenario and case (the first other row);
    in (b) also the libvips engine against Pillow's."""
    lines = [
        "| scenario | case | server | req/s | p50 ms | p99 ms | errors | ratio |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in sorted(results, key=lambda r: r.scenario):
        groups.setdefault((r.scenario, r.case), []).append(r)
    for (scenario, case), rows in groups.items():
        peer = next((r for r in rows if not r.server.startswith("imageserver")), None)
        pillow = next((r for r in rows if "--engine pillow" in r.server), None)
        for r in rows:
            ratios = []
            if r.server.startswith("imageserver") and peer is not None:
                ratios.append(f"{r.rps / peer.rps:.2f} x {peer.server.split(' (')[0]}")
            if "--engine vips" in r.server and pillow is not None:
                ratios.append(f"{r.rps / pillow.rps:.2f} x Pillow's")
            p50 = f"{r.p50_ms:.1f}" if r.p50_ms else "—"
            p99 = f"{r.p99_ms:.1f}" if r.p99_ms else "—"
            lines.append(
                f"| {scenario} | {case or '—'} | {r.server} | {r.rps:.1f} | {p50} | {p99} | {r.errors} "
                f"| {'; '.join(ratios)} |"
            )
    return "\n".join(lines)


def verdict(results: list[Result]) -> str:
    """Which engine renders (b) faster here, case by case: the default follows the first."""
    lines = []
    for case, _, _ in COVERS:
        rates = {
            engine: next((r.rps for r in results if r.case == case and f"--engine {engine}" in r.server), 0.0)
            for engine in imaging.ENGINES
        }
        if all(rates.values()):
            faster = max(rates, key=lambda e: rates[e])
            lines.append(
                f"- {case}: {faster} is faster (vips = {rates['vips'] / rates['pillow']:.2f} x pillow)"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=int, default=10, help="measured seconds per run (after 2 s warm-up)"
    )
    parser.add_argument("--images", type=int, default=16, help="photos in the corpus")
    parser.add_argument("--only", default="abcde", help="the scenarios to run, e.g. c or ab")
    args = parser.parse_args()
    results, peaks = run(args.seconds, args.images, args.only)
    text = table(results)
    if peaks:
        text += "\n\nPeak RSS under the (b) load:\n\n| server | peak RSS MB |\n|---|---:|\n"
        text += "\n".join(f"| {name} | {mb:.0f} |" for name, mb in peaks.items())
        text += "\n\nFaster engine on this machine (`--engine`; the default follows the first case):\n\n"
        text += verdict(results)
    out = REPO_ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps([r.__dict__ for r in results], indent=2))
    print(text)
    say("results in bench/out/results.md and bench/out/results.json")
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
