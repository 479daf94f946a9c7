"""The storage role: a node that keeps blobs for one shard replica on its own disk."""

from __future__ import annotations

import asyncio

from aiohttp import web

from imageserver.blobstore import BadBlob, BlobStore
from imageserver.faults import Faults
from imageserver.files import blob_response
from imageserver.metrics import Metrics
from imageserver.web import application, error

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
    app = application(metrics, faults, lambda: None, max_body=max_bytes + 1024, admin_token=admin_token)
    app[STORE_KEY] = store
    metrics.watch_store(store)
    app.router.add_put("/v1/blobs/{name}", put_blob, name="blob_put")
    app.router.add_get("/v1/blobs/{name}", get_blob, name="blob_get", allow_head=True)
    return app
