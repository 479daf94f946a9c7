"""`imageserver serve|frontend|storage`: one program, three roles.

Every option can also come from the environment (IMAGESERVER_<OPTION>), which is how the
operator configures pods; datacenter and revision label every metric.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from aiohttp import web

from imageserver import imaging, logs, memory
from imageserver.admission import IPNetwork, Resources, parse_networks, resident_bytes, work_budget
from imageserver.blobstore import BlobStore
from imageserver.faults import Faults
from imageserver.frontend import CLIENT_SHARE, Settings, frontend_app
from imageserver.imaging import Limits
from imageserver.metrics import Metrics
from imageserver.replication import ReplicatedStore
from imageserver.storage_node import storage_app
from imageserver.stores import LocalStore
from imageserver.topology import TopologyWatcher
from imageserver.variants import Size
from imageserver.web import LIFECYCLE_KEY

log = logging.getLogger("imageserver")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"IMAGESERVER_{name}", default)


def _secret(file_option: str | None, env_name: str) -> str | None:
    """A secret from a file (mounted Secret) or the environment; never from a flag value."""
    if file_option:
        return Path(file_option).read_text().strip() or None
    return _env(env_name) or None


def _sizes(text: str) -> tuple[Size, ...]:
    try:
        return tuple(Size.parse(part) for part in text.split(",") if part.strip())
    except ValueError as why:
        raise argparse.ArgumentTypeError(str(why)) from None


def _networks(text: str) -> tuple[IPNetwork, ...]:
    try:
        return parse_networks(text)
    except ValueError as why:
        raise argparse.ArgumentTypeError(str(why)) from None


def _number(
    group: argparse.ArgumentParser,
    flag: str,
    kind: Callable[[str], float],
    default: float,
    help: str | None = None,
    *,
    env: str | None = None,
) -> None:
    """A numeric option whose default is IMAGESERVER_<FLAG> (or `env`) when that is set."""
    name = "IMAGESERVER_" + (env or flag.removeprefix("--").replace("-", "_").upper())
    raw = os.environ.get(name)
    try:
        value = kind(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name}={raw!r}: {flag} takes a number") from None
    group.add_argument(flag, type=kind, default=value, help=help)


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", default=_env("HOST", "127.0.0.1"))
    _number(common, "--port", int, 8080)
    common.add_argument("--datacenter", default=_env("DATACENTER", "local"), help="labels metrics")
    common.add_argument("--revision", default=_env("REVISION", "dev"), help="labels metrics")
    _number(common, "--max-upload-bytes", int, 25 << 20)
    _number(common, "--max-pixels", int, 50_000_000)
    common.add_argument(
        "--enable-admin",
        action="store_true",
        default=_env("ENABLE_ADMIN") == "true",
        help="serve /admin/faults and /admin/drain (needs a token)",
    )
    common.add_argument(
        "--admin-token-file",
        default=_env("ADMIN_TOKEN_FILE"),
        help="file holding the admin bearer token (or IMAGESERVER_ADMIN_TOKEN)",
    )
    common.add_argument(
        "--storage-token-file",
        default=_env("STORAGE_TOKEN_FILE"),
        help="file holding the token storage nodes require of writers (or IMAGESERVER_STORAGE_TOKEN); "
        "frontends and storage nodes send it. None: storage nodes take writes from anyone",
    )
    _number(common, "--fault-error-ratio", float, 0.0, "fail this share of data requests (game days)")
    common.add_argument(
        "--fault-seed",
        default=_env("FAULT_SEED", socket.gethostname()),
        help="seeds which requests the faults fail (or IMAGESERVER_FAULT_SEED; default: the host name, "
        "so replicas fail apart)",
    )
    _number(
        common,
        "--fault-latency",
        float,
        0.0,
        "add this many seconds to data requests (game days)",
        env="FAULT_LATENCY_SECONDS",
    )
    _number(
        common,
        "--drain-delay",
        float,
        5.0,
        "seconds between SIGTERM and closing the listener: readiness fails at once, requests are "
        "still served while load balancers stop sending them (SIGINT skips it)",
    )
    _number(
        common,
        "--shutdown-timeout",
        float,
        30.0,
        "seconds requests in flight get to finish once the listener is closed",
    )
    common.add_argument("--log-level", default=_env("LOG_LEVEL", "info"))
    common.add_argument("--access-log", action="store_true", default=_env("ACCESS_LOG") == "true")

    serving = argparse.ArgumentParser(add_help=False)
    serving.add_argument(
        "--variants",
        type=_sizes,
        default=_sizes(_env("VARIANTS", "300x300,1200x1200") or ""),
        help="allowlisted fit-in sizes rendered at upload, e.g. 300x300,1200x1200",
    )
    serving.add_argument(
        "--variant-format",
        choices=("original", "auto"),
        default=_env("VARIANT_FORMAT", "original"),
        help="the format of a variant URL that names none: the original's, or auto (AVIF, else "
        "WebP, else the original's, from the browser's Accept; answers say Vary: Accept)",
    )
    serving.add_argument(
        "--engine",
        choices=imaging.ENGINES,
        default=_env("ENGINE", "pillow"),
        help="what renders variants: pillow, or vips (libvips' shrink-on-load; stills from "
        "JPEG, PNG, WebP and AVIF, Pillow renders the rest). Same sizes, limits and colour "
        "rule; `make bench` compares them on this machine",
    )
    serving.add_argument(
        "--signing-key-file",
        default=_env("SIGNING_KEY_FILE"),
        help="HMAC key for on-demand variants (or IMAGESERVER_SIGNING_KEY); none: allowlist only",
    )
    _number(serving, "--cache-bytes", int, 256 << 20)
    _number(
        serving,
        "--memory-limit",
        int,
        0,
        "bytes this process may use; 0: the container's cgroup limit (v1 or v2), else the "
        "machine's memory. Uploads and renders are admitted against what the limit leaves "
        "after the cache and the process itself",
    )
    _number(
        serving,
        "--render-threads",
        int,
        0,
        "0: the cgroup's CPU quota, rounded up (else the CPUs this process may run on)",
    )
    _number(serving, "--per-client", int, 8, "uploads and renders in flight per client (429 past it)")
    serving.add_argument(
        "--trusted-proxies",
        type=_networks,
        default=_networks(_env("TRUSTED_PROXIES", "") or ""),
        help="addresses or CIDRs (comma-separated) whose X-Forwarded-For names the client, "
        "such as the gateway's; none by default: the peer is the client",
    )
    _number(
        serving,
        "--body-idle-timeout",
        float,
        10.0,
        "seconds an upload's body may send nothing before it is cut off (408)",
    )
    _number(
        serving,
        "--body-grace",
        float,
        10.0,
        "seconds before an upload's body must keep up --body-min-rate on average",
    )
    _number(
        serving,
        "--body-min-rate",
        int,
        64 << 10,
        "bytes per second an upload's body must average after the grace (408 otherwise)",
    )
    _number(
        serving,
        "--queue",
        int,
        64,
        "requests that may wait for memory, and for a render thread (503 past it)",
    )
    _number(
        serving,
        "--workers",
        int,
        1,
        "processes sharing the port (SO_REUSEPORT); metrics are per process, "
        "so under Prometheus keep 1 and scale pods instead",
    )

    top = argparse.ArgumentParser(prog="imageserver", description=__doc__)
    roles = top.add_subparsers(dest="role", required=True)
    serve = roles.add_parser("serve", parents=[common, serving], help="frontend and storage in one process")
    serve.add_argument("--data", type=Path, required=True)
    frontend = roles.add_parser(
        "frontend", parents=[common, serving], help="stateless API over the storage nodes"
    )
    frontend.add_argument(
        "--topology", type=Path, required=True, help="the shard map (JSON), reloaded on change"
    )
    _number(frontend, "--topology-interval", float, 1.0, "seconds between two reads of the shard map")
    storage = roles.add_parser("storage", parents=[common], help="a storage node")
    storage.add_argument("--data", type=Path, required=True)
    storage.add_argument(
        "--topology",
        type=Path,
        default=_env("TOPOLOGY"),
        help="the shard map (JSON), reloaded on change: where to deliver the copies other "
        "datacenters are owed. Without it they are kept, not delivered",
    )
    storage.add_argument(
        "--shard",
        default=_env("SHARD"),
        help="this node's shard in the topology: with it, the node sends the images it holds "
        "but no longer owns to their owners (after a resharding)",
    )
    storage.add_argument(
        "--accept-unauthenticated-writes",
        action="store_true",
        default=_env("ACCEPT_UNAUTHENTICATED_WRITES") == "true",
        help="with a storage token, also take writes that carry none (a wrong one is still refused): "
        "for the upgrade from a release whose frontends send none",
    )
    _number(storage, "--rebalance-rate", float, 50.0, "images a second the rebalancer may move")
    _number(storage, "--rebalance-interval", float, 5.0, "seconds between the rebalancer's passes")
    _number(
        storage,
        "--rebalance-settle",
        float,
        120.0,
        "seconds a new topology must have been in force before images are moved off this node "
        "(every frontend must have it: one with the old map looks only among the old shards)",
    )
    _number(
        storage,
        "--disk-reserve",
        int,
        64 << 20,
        "bytes kept free on the volume: below it writes answer 507 and the node is not ready",
    )
    _number(
        storage,
        "--handoff-max-backoff",
        float,
        60.0,
        "longest wait, in seconds, before copies to a failing datacenter are tried again",
    )
    return top


def _faults(args: argparse.Namespace) -> Faults:
    faults = Faults(args.fault_error_ratio, args.fault_latency, seed=args.fault_seed)
    faults.validate()
    return faults


def _settings(args: argparse.Namespace, admin_token: str | None) -> Settings:
    key = _secret(args.signing_key_file, "SIGNING_KEY")
    found = Resources.discover()
    workers = max(1, args.workers)  # they share the container: each gets its part
    limit = (args.memory_limit or found.memory_limit) // workers
    budget = work_budget(limit, cache_bytes=args.cache_bytes, resident_now=resident_bytes())
    limits = Limits(max_bytes=args.max_upload_bytes, max_pixels=args.max_pixels)
    if budget * CLIENT_SHARE < 2 * limits.max_bytes + 1:
        raise SystemExit(
            f"a memory limit of {limit >> 20} MiB per process leaves {max(budget, 0) >> 20} MiB for "
            f"uploads and renders after the variant cache ({args.cache_bytes >> 20} MiB) and the "
            f"process itself, of which one client may use {CLIENT_SHARE:.0%}: one upload of "
            f"--max-upload-bytes needs {(2 * limits.max_bytes) >> 20} MiB. Raise the limit, or lower "
            "--cache-bytes or --max-upload-bytes"
        )
    imaging.configure(limits, args.engine)
    settings = Settings(
        datacenter=args.datacenter,
        revision=args.revision,
        limits=limits,
        allowlist=args.variants,
        default_format=args.variant_format,
        signing_key=key.encode() if key else None,
        admin_token=admin_token,
        cache_bytes=args.cache_bytes,
        render_threads=args.render_threads or max(1, found.cpus // workers),
        memory_budget=budget,
        max_waiting=args.queue,
        per_client=args.per_client,
        trusted_proxies=args.trusted_proxies,
        body_idle=args.body_idle_timeout,
        body_grace=args.body_grace,
        body_min_rate=max(1, args.body_min_rate),
    )
    log.info(
        "admission",
        extra={
            "memory_limit": limit,
            "work_budget": budget,
            "render_threads": settings.render_threads,
            "per_client": settings.per_client,
        },
    )
    return settings


def build_app(args: argparse.Namespace) -> web.Application:
    admin_token = _secret(args.admin_token_file, "ADMIN_TOKEN") if args.enable_admin else None
    if args.enable_admin and not admin_token:
        raise SystemExit("--enable-admin needs a token: --admin-token-file or IMAGESERVER_ADMIN_TOKEN")
    metrics = Metrics(args.datacenter, args.revision, args.role)
    faults = _faults(args)
    storage_token = _secret(args.storage_token_file, "STORAGE_TOKEN")
    if args.role == "storage" and storage_token is None:
        log.warning("no storage token: this node takes writes from anyone who can reach it")
    if args.role == "storage":
        store = BlobStore(args.data, reserve=args.disk_reserve, on_corrupt=lambda _: metrics.corrupt.inc())
        watcher = (
            TopologyWatcher(args.topology, on_change=lambda t: metrics.topology_generation.set(t.generation))
            if args.topology
            else None
        )
        return storage_app(
            store,
            metrics,
            faults,
            max_bytes=args.max_upload_bytes,
            admin_token=admin_token,
            topology=watcher,
            max_backoff=args.handoff_max_backoff,
            write_token=storage_token,
            tokenless_writes=args.accept_unauthenticated_writes,
            shard=args.shard,
            rebalance_rate=args.rebalance_rate,
            rebalance_settle=args.rebalance_settle,
            rebalance_interval=args.rebalance_interval,
        )
    settings = _settings(args, admin_token)
    if args.role == "serve":
        blobs = BlobStore(args.data, on_corrupt=lambda _: metrics.corrupt.inc())
        metrics.watch_store(blobs)
        return frontend_app(LocalStore(blobs), settings, metrics, faults)
    watcher = TopologyWatcher(
        args.topology,
        args.topology_interval,
        on_change=lambda t: metrics.topology_generation.set(t.generation),
    )
    replicated = ReplicatedStore(watcher, args.datacenter, metrics, token=storage_token)
    app = frontend_app(replicated, settings, metrics, faults)

    async def start(_: web.Application) -> None:
        watcher.refresh()
        await replicated.start()
        app["topology_task"] = asyncio.create_task(watcher.run())

    async def stop(_: web.Application) -> None:
        app["topology_task"].cancel()
        await replicated.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


def _run(args: argparse.Namespace, reuse_port: bool) -> None:
    logs.setup(args.log_level, role=args.role, datacenter=args.datacenter, revision=args.revision)
    memory.return_large_buffers()
    asyncio.run(_serve(build_app(args), args, reuse_port))


RUNNER_GRACE = 2.0  # seconds aiohttp gives what is still being sent, once handlers are done


async def _serve(app: web.Application, args: argparse.Namespace, reuse_port: bool) -> None:
    """Serve until SIGTERM or SIGINT, then shut down in order: readiness fails, requests are
    served for the drain delay (SIGTERM only: a person's Ctrl-C does not wait), the listener
    closes, requests in flight finish (up to the shutdown timeout), then the app's cleanup.
    Storage nodes owe nothing in memory: their hints are on disk before they answer."""
    runner = web.AppRunner(
        app,
        access_log=logging.getLogger("imageserver.access") if args.access_log else None,
        # Requests in flight are waited for below, within --shutdown-timeout; aiohttp's own wait
        # after that is only for answers still being sent (a file streaming to a slow client).
        shutdown_timeout=RUNNER_GRACE,
        # A client that hangs up cancels its request: out of any waiting room, never started.
        handler_cancellation=True,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, args.host, args.port, reuse_port=reuse_port or None).start()
        log.info("listening", extra={"host": args.host, "port": args.port, "pid": os.getpid()})
        loop = asyncio.get_running_loop()
        received: asyncio.Queue[signal.Signals] = asyncio.Queue()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, received.put_nowait, signum)
        first = await received.get()
        lifecycle = app[LIFECYCLE_KEY]
        lifecycle.stopping = True
        if first == signal.SIGTERM and args.drain_delay > 0:
            log.info("draining", extra={"seconds": args.drain_delay})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(args.drain_delay):
                    while await received.get() != signal.SIGINT:  # Ctrl-C: stop waiting
                        pass
        for site in list(runner.sites):
            await site.stop()  # the listener only: connections open go on
        log.info("stopping", extra={"in_flight": lifecycle.in_flight, "timeout": args.shutdown_timeout})

        async def interrupted() -> None:  # a person's Ctrl-C: stop waiting
            while await received.get() != signal.SIGINT:
                pass

        waits = [asyncio.ensure_future(lifecycle.idle()), asyncio.ensure_future(interrupted())]
        await asyncio.wait(waits, timeout=args.shutdown_timeout, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
    finally:
        await runner.cleanup()


def _run_workers(args: argparse.Namespace, run: Callable[[argparse.Namespace, bool], None]) -> None:
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=run, args=(args, True), daemon=True) for _ in range(args.workers)]
    for child in children:
        child.start()

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.pid:
                os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.join()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.role != "storage" and args.workers > 1:
        _run_workers(args, _run)
    else:
        _run(args, reuse_port=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
