"""The storage role: a node that keeps blobs for one shard replica on its own disk."""

from __future__ import annotations

import asyncio

from aiohttp import web

from imageserver.blobstore import BadBlob, BlobStore
from imageserver.faults import Faults
from imageserver.files import blob_response
from imageserver.metrics import Metrics
from imageserver.web import (
    FAULTS_KEY,
    METRICS_KEY,
    READINESS_KEY,
    add_admin_routes,
    add_operational_routes,
    error,
    observe,
)

STORE_KEY = web.AppKey("store", BlobStore)


async def put_blob(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    name = request.match_info["name"]
    data = await request.read()
    try:
        created = await asyncio.to_thread(store.put, name, data)
    except BadBlob as why:
        return error(400, str(why))
    return web.Response(status=201 if created else 200)


async def get_blob(request: web.Request) -> web.StreamResponse:
    try:
        path = request.app[STORE_KEY].open_path(request.match_info["name"])
    except BadBlob as why:
        return error(400, str(why))
    if path is None:
        return error(404, "no such blob")
    return blob_response(path, None, cache=False)


def storage_app(
    store: BlobStore, metrics: Metrics, faults: Faults, *, max_bytes: int, admin_token: str | None
) -> web.Application:
    # A blob is an original (≤ max_bytes) or a variant, which is smaller.
    app = web.Application(middlewares=[observe], client_max_size=max_bytes + 1024)
    app[STORE_KEY] = store
    app[METRICS_KEY] = metrics
    app[FAULTS_KEY] = faults
    app[READINESS_KEY] = lambda: None
    metrics.storage_objects.set_function(lambda: store.count)
    metrics.storage_bytes.set_function(lambda: store.bytes)
    app.router.add_put("/v1/blobs/{name}", put_blob, name="blob_put")
    app.router.add_get("/v1/blobs/{name}", get_blob, name="blob_get", allow_head=True)
    add_operational_routes(app)
    if admin_token:
        add_admin_routes(app, admin_token)
    return app
