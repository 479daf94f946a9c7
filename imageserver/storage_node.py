"""The storage role: a node that keeps blobs for one shard replica on its own disk, and the
hints of the copies other datacenters are owed (`handoff`)."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from imageserver.blobstore import DISK_FULL, BadBlob, BlobStore, Full, is_variant
from imageserver.faults import Faults
from imageserver.files import OpenFiles, blob_response
from imageserver.handoff import OWED_HEADER, BadHint, Handoff, Hints, parse_owed
from imageserver.metrics import Metrics
from imageserver.rebalance import Rebalancer
from imageserver.topology import TopologyWatcher
from imageserver.variants import IMAGE_ID
from imageserver.web import METRICS_KEY, application, bearer_matches, error

STORE_KEY = web.AppKey("store", BlobStore)
HINTS_KEY = web.AppKey("hints", Hints)
HANDOFF_KEY = web.AppKey("handoff", Handoff)
FILES_KEY = web.AppKey("files", OpenFiles)
TASKS_KEY: web.AppKey[list[asyncio.Task[None]]] = web.AppKey("tasks")
WRITE_TOKEN_KEY: web.AppKey[str | None] = web.AppKey("write_token")
TOKENLESS_KEY: web.AppKey[bool] = web.AppKey("tokenless_writes")


async def put_blob(request: web.Request) -> web.Response:
    token = request.app[WRITE_TOKEN_KEY]
    if token is not None and request.app[TOKENLESS_KEY] and "Authorization" not in request.headers:
        request.app[METRICS_KEY].unauthenticated_writes.inc()  # an older frontend, mid-upgrade
    elif token is not None and not bearer_matches(request, token):
        # Only the ImageServer's own frontends and storage nodes write: a variant from
        # anyone else could be served as ours.
        return error(401, "writing needs the ImageServer's storage token (Authorization: Bearer)")
    store = request.app[STORE_KEY]
    name = request.match_info["name"]
    try:
        owed = parse_owed(request.headers.get(OWED_HEADER))
        if owed and not IMAGE_ID.fullmatch(name):
            raise BadHint(f"{OWED_HEADER} goes with an original, the image's last blob")
    except BadHint as why:
        return error(400, str(why))
    data = await request.read()
    hints = request.app[HINTS_KEY]

    def store_and_owe() -> bool:
        # Durable before the answer: an acknowledged upload's copies are owed on disk. Under
        # the image's lock, so the rebalancer cannot remove it between the two.
        with hints.locked(name) if owed else contextlib.nullcontext():
            created = store.put(name, data)
            hints.owe(name, owed)
        return created

    try:
        created = await asyncio.to_thread(store_and_owe)
    except BadBlob as why:
        return error(400, str(why))
    except Full as why:
        return _insufficient_storage(str(why))
    except OSError as why:
        if why.errno in DISK_FULL:
            return _insufficient_storage(f"no room for the copies owed ({why.strerror})")
        raise
    if owed and HANDOFF_KEY in request.app:
        request.app[HANDOFF_KEY].wake()
    return web.Response(status=201 if created else 200)


def _insufficient_storage(why: str) -> web.Response:
    # The frontend counts this replica out and relies on the shard's others.
    return error(507, why)


async def get_blob(request: web.Request) -> web.StreamResponse:
    store, name = request.app[STORE_KEY], request.match_info["name"]
    try:
        if is_variant(name):  # small, and checked before it is served
            variant = await asyncio.to_thread(store.read_variant, name)
            return error(404, "no such blob") if variant is None else web.Response(body=variant)
        path = store.open_path(name)
    except BadBlob as why:
        return error(400, str(why))
    if path is None:
        return error(404, "no such blob")
    return blob_response(request, request.app[FILES_KEY], path, None, cache=False)


def storage_app(
    store: BlobStore,
    metrics: Metrics,
    faults: Faults,
    *,
    max_bytes: int,
    admin_token: str | None,
    topology: TopologyWatcher | None = None,
    max_backoff: float = 60.0,
    write_token: str | None = None,
    tokenless_writes: bool = False,
    shard: str | None = None,
    rebalance_rate: float = 50.0,
    rebalance_settle: float = 120.0,
    rebalance_interval: float = 5.0,
) -> web.Application:
    """Without a topology the node keeps the hints it is given but delivers none, and without
    its shard's name it does not rebalance; without a write token anyone who reaches it may
    write."""
    # A blob is an original (≤ max_bytes) or a variant, which is smaller.
    app = application(
        metrics,
        faults,
        lambda: store.readiness(max_bytes),
        max_body=max_bytes + 1024,
        admin_token=admin_token,
    )
    app[STORE_KEY] = store
    files = app[FILES_KEY] = OpenFiles()

    async def close_files(_: web.Application) -> None:
        files.close()

    app.on_cleanup.append(close_files)
    app[WRITE_TOKEN_KEY] = write_token
    app[TOKENLESS_KEY] = tokenless_writes
    hints = app[HINTS_KEY] = Hints(store.root)
    metrics.watch_store(store)
    metrics.watch_hints(hints)
    app.router.add_put("/v1/blobs/{name}", put_blob, name="blob_put")
    app.router.add_get("/v1/blobs/{name}", get_blob, name="blob_get", allow_head=True)
    if topology is not None:
        watcher = topology
        handoff = app[HANDOFF_KEY] = Handoff(
            hints,
            store,
            watcher,
            metrics,
            max_backoff=max_backoff,
            token=write_token,
            forget_after=rebalance_settle,  # a map must have been in force this long
        )

        workers = [watcher.run, handoff.run]
        if shard is not None:
            rebalancer = Rebalancer(
                store,
                hints,
                watcher,
                metrics,
                datacenter=metrics.labels["datacenter"],
                shard=shard,
                rate=rebalance_rate,
                settle=rebalance_settle,
                interval=rebalance_interval,
                token=write_token,
            )
            workers.append(rebalancer.run)

        async def start(app: web.Application) -> None:
            watcher.refresh()
            app[TASKS_KEY] = [asyncio.create_task(work()) for work in workers]

        async def stop(app: web.Application) -> None:
            for task in app[TASKS_KEY]:
                task.cancel()
            await asyncio.gather(*app[TASKS_KEY], return_exceptions=True)

        app.on_startup.append(start)
        app.on_cleanup.append(stop)
    return app
