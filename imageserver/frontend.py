"""The frontend role: the public HTTP API (upload, originals, variants).

Order of work on a GET, cheapest first: the id and query are checked, the variant is
authorised (allowlisted, or signed), a matching If-None-Match is answered 304, and only then
is anything read or rendered. Pillow runs in a thread pool (it releases the GIL).

Uploads and renders are admitted before they cost anything (`admission`): a slot of the
client's, the body within its deadlines and memory for it as it arrives, the header, memory
for the decode the header implies, then a render thread. Each step refuses at once when it
cannot be had soon: 413, 429 or 503 with Retry-After, 408 for a body that does not come.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from aiohttp import hdrs, web

from imageserver import admission, imaging, sealed, variants
from imageserver.admission import ClientLimit, Gate, Holding, IPNetwork, Shed
from imageserver.cache import ByteLRU
from imageserver.faults import Faults
from imageserver.files import IMMUTABLE, OpenFiles, blob_response
from imageserver.imaging import Limits, Rejected
from imageserver.memory import Trimmer
from imageserver.metrics import Metrics
from imageserver.stores import Blob, ImageStore, Unavailable
from imageserver.variants import IMAGE_ID, BadVariant, Size, Variant
from imageserver.web import application, error

log = logging.getLogger(__name__)
RETRY_AFTER = {"Retry-After": str(admission.RETRY_AFTER_SECONDS)}
CLIENT_SHARE = 0.5  # of the memory budget: one client's stalled uploads never hold all of it
T = TypeVar("T")
BODY_STEP = 4 << 20  # memory for a body is taken in steps of this (twice: chunks and join)


@dataclass(frozen=True)
class Settings:
    datacenter: str = "local"
    revision: str = "dev"
    limits: Limits = field(default_factory=Limits)
    allowlist: tuple[Size, ...] = field(default_factory=variants.default_allowlist)
    default_format: variants.DefaultFormat = "original"  # of a variant URL that names none
    signing_key: bytes | None = None
    admin_token: str | None = None  # admin endpoints exist only when set
    cache_bytes: int = 256 * 1024 * 1024
    render_threads: int = field(default_factory=lambda: os.cpu_count() or 2)
    memory_budget: int = 1 << 30  # for bodies and decodes; the CLI derives it from the cgroup
    max_waiting: int = 64  # per gate; past it, 503 at once
    max_wait: float = 2.0  # seconds in a gate's waiting room before 503
    per_client: int = 8  # uploads and renders in flight per client
    trusted_proxies: tuple[IPNetwork, ...] = ()  # whose X-Forwarded-For names the client
    body_grace: float = 10.0  # a body must arrive within this, plus its size at body_min_rate
    body_min_rate: int = 64 * 1024  # bytes per second
    body_idle: float = 10.0  # seconds without a byte


class Frontend:
    def __init__(self, store: ImageStore, settings: Settings, metrics: Metrics) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(settings.render_threads, thread_name_prefix="render")
        trimmer = Trimmer()

        def memory_changed(gate: Gate) -> None:
            metrics.watch_gate(gate)
            trimmer.note(gate.in_use)

        self.memory = Gate(
            "memory",
            settings.memory_budget,
            max_waiting=settings.max_waiting,
            max_wait=settings.max_wait,
            on_change=memory_changed,
            on_abandon=metrics.count_abandoned,
            show=admission.mebibytes,
            client_share=CLIENT_SHARE,
        )
        self.threads = Gate(
            "render",
            # One job running and one ready per thread: a thread that finishes starts the next
            # job at once instead of idling until the event loop hands it one (about 10 % of
            # on-demand render throughput). A ready job whose client leaves is cancelled.
            2 * settings.render_threads,
            max_waiting=settings.max_waiting,
            max_wait=settings.max_wait,
            on_change=metrics.watch_gate,
            on_abandon=metrics.count_abandoned,
            show=lambda n: f"{n} thread(s)",
        )
        self.clients = ClientLimit(settings.per_client)
        self.files = OpenFiles()  # originals on this disk (the embedded `serve` role)
        metrics.watch_gate(self.memory)
        metrics.watch_gate(self.threads)
        # Headers of originals (format, size, mode): what admission prices a render by.
        self.headers: ByteLRU[imaging.Probe] = ByteLRU(4096, lambda _: 1)
        self.cache: ByteLRU[tuple[bytes, str]] = ByteLRU(
            settings.cache_bytes,
            lambda v: len(v[0]),
            on_hit=metrics.cache_hits.inc,
            on_miss=metrics.cache_misses.inc,
        )

    # -- upload ----------------------------------------------------------------------------

    def client(self, request: web.Request) -> str:
        forwarded = request.headers.getall("X-Forwarded-For", [])
        return admission.client_of(request.remote, forwarded, self.settings.trusted_proxies)

    def shed(self, why: Shed) -> web.Response:
        self.metrics.shed.labels(reason=why.reason).inc()
        retry = why.retry_after
        return error(why.status, why.message, {"Retry-After": str(retry)} if retry else None)

    async def upload(self, request: web.Request) -> web.Response:
        limit = self.settings.limits.max_bytes
        if request.content_length is not None and request.content_length > limit:
            return error(413, f"upload is larger than {limit} bytes")
        client = self.client(request)
        try:
            self.clients.enter(client)
        except Shed as why:
            return self.shed(why)
        try:
            return await self._upload(request, client)
        except Shed as why:
            response = self.shed(why)
            if why.status == 408:
                response.force_close()  # the rest of the body may still be on its way
            return response
        finally:
            self.clients.leave(client)

    async def _upload(self, request: web.Request, client: str) -> web.Response:
        with Holding() as held:
            data = await self._read_body(request, held, client)
            if not data:
                return error(400, "empty body: send the image bytes")
            try:
                info = await asyncio.to_thread(imaging.probe, data, self.settings.limits)
                need = imaging.upload_need(info, self.settings.allowlist)
                await held.take(self.memory, imaging.memory_cost(info, need, 0), client)
                await held.take(self.threads, 1, client)
                image_id, (probe, rendered) = await self._in_pool(
                    held, "upload", _digest_and_render, data, self.settings, info
                )
            except Rejected as why:
                return error(why.status, why.message)
            held.give_back(self.threads)
            names = {size: variants.blob_name(image_id, Variant(size)) for size in rendered}
            blobs = {names[size]: sealed.seal(names[size], rendered[size]) for size in rendered}
            blobs[image_id] = data
            # Once begun, the copies are finished even if the client leaves (a local quorum
            # without the hints of its cross-datacenter copies would be a half-stored image),
            # and the bytes they send stay counted until then.
            stored = asyncio.ensure_future(self.store.put(image_id, blobs))
            stored.add_done_callback(lambda done: done.cancelled() or done.exception())
            held.busy_until(stored)
            try:
                await asyncio.shield(stored)
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

    async def _in_pool(self, held: Holding, kind: str, work: Callable[..., T], *args: object) -> T:
        """Run admitted work on a render thread. Its grants stay held until the thread is done
        with it; if its client leaves before a thread took it up, it never starts."""
        started = self.metrics.renders.labels(kind=kind)

        def run() -> T:
            started.inc()
            return work(*args)

        future = self.pool.submit(run)
        held.busy_until(future)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if future.cancelled():
                self.metrics.count_abandoned(self.threads)
            raise

    async def _read_body(self, request: web.Request, held: Holding, client: str) -> bytes:
        """The body, no larger than the limit. Memory is taken as it arrives, in steps (twice
        what came: the chunks and their join), so a body that trickles holds only what it
        sent. It must keep an average rate after a grace period, and never go idle for long:
        the next byte is due by start + grace + received / rate (408 otherwise)."""
        settings, limit = self.settings, self.settings.limits.max_bytes
        declared = request.content_length if request.content_length is not None else limit
        loop = asyncio.get_running_loop()
        started = loop.time()
        chunks: list[bytes] = []
        size = reserved = 0
        try:
            while True:
                due = started + settings.body_grace + size / settings.body_min_rate
                wait = min(settings.body_idle, due - loop.time())
                if wait <= 0:
                    raise TimeoutError
                async with asyncio.timeout(wait):
                    chunk = await request.content.readany()
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise Shed(413, "body_too_large", f"upload is larger than {limit} bytes")
                while 2 * size > reserved:
                    step = 2 * max(1, min(BODY_STEP, declared - reserved // 2, limit - reserved // 2))
                    await held.take(self.memory, step, client)
                    reserved += step
                chunks.append(chunk)
        except TimeoutError:
            raise Shed(408, "body_timeout", "the upload's body did not arrive in time") from None
        return b"".join(chunks)

    # -- reads -----------------------------------------------------------------------------

    def _authorise(
        self, path: str, query: dict[str, str], variant: Variant, *, negotiated: bool
    ) -> web.Response | None:
        if variants.is_allowlisted(variant, self.settings.allowlist) or (
            negotiated and variants.is_allowlisted_size(variant, self.settings.allowlist)
        ):
            return None
        key = self.settings.signing_key
        allowed = ", ".join(str(s) for s in self.settings.allowlist)
        if key is None:
            return error(403, f"only the allowlisted sizes ({allowed}) can be served")
        if not variants.signature_valid(key, path, query):
            return error(403, f"sizes other than {allowed} need a valid signature (sig)")
        return None

    async def get_image(self, request: web.Request) -> web.StreamResponse:
        image_id = request.match_info["id"]
        if not IMAGE_ID.fullmatch(image_id):
            return error(404, "no such image")
        try:
            query = variants.single_values(request.query.items())
            variant = variants.parse(
                query,
                max_dimension=self.settings.limits.max_dimension,
                accept=request.headers.get(hdrs.ACCEPT),
                default_format=self.settings.default_format,
                negotiable=imaging.NEGOTIABLE,
            )
        except BadVariant as why:
            return error(400, str(why))
        negotiated = variants.varies(query, self.settings.default_format)
        if variant is not None:
            refused = self._authorise(request.path, query, variant, negotiated=negotiated)
            if refused is not None:
                return refused
        response = await self._answer(request, image_id, variant)
        if negotiated:
            # The negotiated format is in the variant, so in its ETag and every cache key
            # here; Vary tells the caches in front of us to key by Accept too (errors and
            # 304s included: they are answers to this Accept).
            response.headers[hdrs.VARY] = hdrs.ACCEPT
        return response

    async def _answer(
        self, request: web.Request, image_id: str, variant: Variant | None
    ) -> web.StreamResponse:
        tag = variants.etag(image_id, variant)
        if_none_match = request.headers.get(hdrs.IF_NONE_MATCH)
        if variants.etag_matches(if_none_match, tag):
            return _not_modified(tag)
        try:
            blob = await self._find(image_id, variant, request)
        except Unavailable as why:
            return error(503, f"no replica can serve the image now: {why}", RETRY_AFTER)
        except Rejected as why:  # a stored original that no longer decodes
            return error(why.status, why.message)
        except Shed as why:
            return self.shed(why)
        if blob is None:
            return error(404, "no such image")
        if variants.matches_any(if_none_match):
            return _not_modified(tag)
        return blob_response(request, self.files, blob, tag, cache=True)

    async def _original_bytes(self, image_id: str) -> bytes | None:
        blob = await self.store.get(image_id, image_id)
        if isinstance(blob, Path):
            return await asyncio.to_thread(blob.read_bytes)
        return blob

    async def _find(self, image_id: str, variant: Variant | None, request: web.Request) -> Blob | None:
        name = variants.blob_name(image_id, variant)
        if variant is None:
            return await self.store.get(image_id, name)
        if variants.is_allowlisted_size(variant, self.settings.allowlist):
            # The upload rendered the original's format; a negotiated one is rendered on its
            # first request and kept beside it.
            return await self._stored_variant(image_id, variant, name, request)
        return await self._render(image_id, variant, request)

    async def _stored_variant(
        self, image_id: str, variant: Variant, name: str, request: web.Request
    ) -> Blob | None:
        """Allowlisted variants are small and immutable: after the first read they are
        answered from memory, which costs less than opening the file again."""
        cached = self.cache.get(name)
        if cached is not None:
            return cached[0]
        stored = await self.store.get(image_id, name)
        data = await asyncio.to_thread(stored.read_bytes) if isinstance(stored, Path) else stored
        payload = None if data is None else sealed.unseal(name, data)
        if data is not None and payload is None:  # the storage node checks too: end to end
            self.metrics.corrupt.inc()
            log.error("a stored variant failed its seal", extra={"blob": name})
        if payload is None:
            # Uploaded before this size was allowlisted or by another renderer, or damaged:
            # render it once and keep it.
            rendered = await self._render(image_id, variant, request)
            if rendered is not None:
                try:
                    await self.store.put(image_id, {name: sealed.seal(name, rendered)})
                except Unavailable as why:  # kept next time, then: the reader has it now
                    log.warning("could not keep a variant", extra={"blob": name, "error": str(why)})
            return rendered
        self.cache.put(name, (payload, ""))
        return payload

    async def _render(self, image_id: str, variant: Variant, request: web.Request) -> bytes | None:
        """One render for all who ask at once. Each asker holds a slot of its own client's
        while it waits; the render itself is admitted against the client that started it."""
        key = variants.blob_name(image_id, variant)
        client = self.client(request)

        async def make() -> tuple[bytes, str]:
            original = await self._original_bytes(image_id)
            if original is None:
                raise _Missing
            limits = self.settings.limits
            info = self.headers.get(image_id)
            if info is None:  # originals never change: one probe per image, kept
                info = await asyncio.to_thread(imaging.probe, original, limits)
                self.headers.put(image_id, info)
            need = imaging.variant_need(info, variant)
            cost = imaging.memory_cost(info, need, len(original), variant.format)
            with Holding() as held:
                await held.take(self.memory, cost, client)
                await held.take(self.threads, 1, client)
                return await self._in_pool(held, "variant", imaging.render, original, variant, limits, info)

        self.clients.enter(client)
        try:
            body, _ = await self.cache.get_or_make(key, make, personal=(Shed,))
        except _Missing:
            return None
        finally:
            self.clients.leave(client)
        return body


def _not_modified(tag: str) -> web.Response:
    return web.Response(status=304, headers={hdrs.ETAG: tag, hdrs.CACHE_CONTROL: IMMUTABLE})


def _digest_and_render(
    data: bytes, settings: Settings, info: imaging.Probe
) -> tuple[str, tuple[imaging.Probe, dict[Size, bytes]]]:
    """Off the event loop: hashing megabytes is work too, not only rendering."""
    rendered = imaging.render_allowlisted(data, settings.allowlist, settings.limits, info)
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
        frontend.files.close()

    app.on_cleanup.append(shutdown)
    return app
