"""The frontend role: the public HTTP API (upload, originals, variants).

Order of work on a GET, cheapest first: the id and query are checked, the variant is
authorised (allowlisted, or signed), a matching If-None-Match is answered 304, and only then
is anything read or rendered. Pillow runs in a thread pool (it releases the GIL).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import hdrs, web

from imageserver import imaging, variants
from imageserver.cache import ByteLRU
from imageserver.faults import Faults
from imageserver.files import IMMUTABLE, blob_response
from imageserver.imaging import Limits, Rejected
from imageserver.metrics import Metrics
from imageserver.stores import Blob, ImageStore, Unavailable
from imageserver.variants import IMAGE_ID, BadVariant, Size, Variant
from imageserver.web import application, error

log = logging.getLogger(__name__)
RETRY_AFTER = {"Retry-After": "1"}


@dataclass(frozen=True)
class Settings:
    datacenter: str = "local"
    revision: str = "dev"
    limits: Limits = field(default_factory=Limits)
    allowlist: tuple[Size, ...] = field(default_factory=variants.default_allowlist)
    signing_key: bytes | None = None
    admin_token: str | None = None  # admin endpoints exist only when set
    cache_bytes: int = 256 * 1024 * 1024
    render_threads: int = field(default_factory=lambda: os.cpu_count() or 2)


class Frontend:
    def __init__(self, store: ImageStore, settings: Settings, metrics: Metrics) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(settings.render_threads, thread_name_prefix="render")
        self.cache: ByteLRU[tuple[bytes, str]] = ByteLRU(
            settings.cache_bytes,
            lambda v: len(v[0]),
            on_hit=metrics.cache_hits.inc,
            on_miss=metrics.cache_misses.inc,
        )

    # -- upload ----------------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        limit = self.settings.limits.max_bytes
        too_large = error(413, f"upload is larger than {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            return too_large
        try:
            data = await request.read()  # stops at client_max_size, for chunked bodies too
        except web.HTTPRequestEntityTooLarge:
            return too_large
        if not data:
            return error(400, "empty body: send the image bytes")
        try:
            image_id, (probe, rendered) = await asyncio.get_running_loop().run_in_executor(
                self.pool, _digest_and_render, data, self.settings
            )
        except Rejected as why:
            return error(why.status, why.message)
        blobs = {variants.blob_name(image_id, Variant(size)): body for size, body in rendered.items()}
        blobs[image_id] = data
        try:
            await self.store.put(image_id, blobs)
        except Unavailable as why:
            return error(503, f"could not store the image: {why}", RETRY_AFTER)
        body = {
            "id": image_id,
            "width": probe.width,
            "height": probe.height,
            "format": probe.format,
            "bytes": len(data),
            "variants": [str(size) for size in rendered],
        }
        return web.json_response(body, status=201, headers={hdrs.LOCATION: f"/v1/images/{image_id}"})

    # -- reads -----------------------------------------------------------------------------

    def _authorise(self, request: web.Request, variant: Variant) -> web.Response | None:
        if variants.is_allowlisted(variant, self.settings.allowlist):
            return None
        key = self.settings.signing_key
        allowed = ", ".join(str(s) for s in self.settings.allowlist)
        if key is None:
            return error(403, f"only the allowlisted sizes ({allowed}) can be served")
        if not variants.signature_valid(key, request.path, request.query):
            return error(403, f"sizes other than {allowed} need a valid signature (sig)")
        return None

    async def get_image(self, request: web.Request) -> web.StreamResponse:
        image_id = request.match_info["id"]
        if not IMAGE_ID.fullmatch(image_id):
            return error(404, "no such image")
        try:
            variant = variants.parse(request.query, max_dimension=self.settings.limits.max_dimension)
        except BadVariant as why:
            return error(400, str(why))
        if variant is not None:
            refused = self._authorise(request, variant)
            if refused is not None:
                return refused
        tag = variants.etag(image_id, variant)
        if variants.etag_matches(request.headers.get(hdrs.IF_NONE_MATCH), tag):
            return web.Response(status=304, headers={hdrs.ETAG: tag, hdrs.CACHE_CONTROL: IMMUTABLE})
        try:
            blob = await self._find(image_id, variant)
        except Unavailable as why:
            return error(503, f"no replica can serve the image now: {why}", RETRY_AFTER)
        except Rejected as why:  # a stored original that no longer decodes
            return error(why.status, why.message)
        if blob is None:
            return error(404, "no such image")
        return blob_response(blob, tag, cache=True)

    async def _original_bytes(self, image_id: str) -> bytes | None:
        blob = await self.store.get(image_id, image_id)
        if isinstance(blob, Path):
            return await asyncio.to_thread(blob.read_bytes)
        return blob

    async def _find(self, image_id: str, variant: Variant | None) -> Blob | None:
        name = variants.blob_name(image_id, variant)
        if variant is None:
            return await self.store.get(image_id, name)
        if variants.is_allowlisted(variant, self.settings.allowlist):
            return await self._stored_variant(image_id, variant, name)
        return await self._render(image_id, variant)

    async def _stored_variant(self, image_id: str, variant: Variant, name: str) -> Blob | None:
        """Allowlisted variants are small and immutable: after the first read they are
        answered from memory, which costs less than opening the file again."""
        cached = self.cache.get(name)
        if cached is not None:
            return cached[0]
        stored = await self.store.get(image_id, name)
        if stored is None:
            # Uploaded before this size was allowlisted: render it once and keep it.
            rendered = await self._render(image_id, variant)
            if rendered is not None:
                await self.store.put(image_id, {name: rendered})
            return rendered
        data = await asyncio.to_thread(stored.read_bytes) if isinstance(stored, Path) else stored
        self.cache.put(name, (data, ""))
        return data

    async def _render(self, image_id: str, variant: Variant) -> bytes | None:
        key = variants.blob_name(image_id, variant)

        async def make() -> tuple[bytes, str]:
            original = await self._original_bytes(image_id)
            if original is None:
                raise _Missing
            body, fmt = await asyncio.get_running_loop().run_in_executor(
                self.pool, imaging.render, original, variant, self.settings.limits
            )
            return body, fmt

        try:
            body, _ = await self.cache.get_or_make(key, make)
        except _Missing:
            return None
        return body


def _digest_and_render(
    data: bytes, settings: Settings
) -> tuple[str, tuple[imaging.Probe, dict[Size, bytes]]]:
    """Off the event loop: hashing megabytes is work too, not only rendering."""
    rendered = imaging.render_allowlisted(data, settings.allowlist, settings.limits)
    return hashlib.sha256(data).hexdigest(), rendered


class _Missing(Exception):
    """The original is not there: nothing to render (404)."""


def frontend_app(store: ImageStore, settings: Settings, metrics: Metrics, faults: Faults) -> web.Application:
    app = application(
        metrics, faults, store.readiness, max_body=settings.limits.max_bytes, admin_token=settings.admin_token
    )
    frontend = Frontend(store, settings, metrics)
    app.router.add_post("/v1/images", frontend.upload, name="upload")
    original = app.router.add_resource("/v1/images/{id}", name="original")
    original.add_route("GET", frontend.get_image)
    original.add_route("HEAD", frontend.get_image)

    async def shutdown(_: web.Application) -> None:
        frontend.pool.shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(shutdown)
    return app
