"""HTTP plumbing shared by the frontend and storage roles: errors as JSON, the middleware
that measures every request (and injects faults on data routes), health, readiness,
metrics, and the admin endpoints for game days."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from imageserver.faults import Faults
from imageserver.metrics import Metrics

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METRICS_KEY = web.AppKey("metrics", Metrics)
FAULTS_KEY = web.AppKey("faults", Faults)
READINESS_KEY: web.AppKey[Callable[[], str | None]] = web.AppKey("readiness")


class Lifecycle:
    """Whether the process is stopping, and the requests it is in the middle of.

    From SIGTERM on, readiness fails and every answer closes its connection, so keep-alive
    clients move to another replica while this one still serves. The listener closes after
    the drain delay; the requests in flight are then waited for here, before aiohttp's own
    shutdown, which stops reading from connections and would starve a body still arriving."""

    def __init__(self) -> None:
        self.stopping = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()


LIFECYCLE_KEY = web.AppKey("lifecycle", Lifecycle)
# Routes that serve users: measured for the SLO, and where game-day faults apply.
DATA_ROUTES = frozenset({"upload", "original", "variant", "blob_get", "blob_put"})


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    name = resource.name if resource is not None else None
    if name == "original" and ("w" in request.query or "h" in request.query):
        return "variant"  # same path, but a different cost and SLO picture
    return name or "unmatched"


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics, faults, lifecycle = request.app[METRICS_KEY], request.app[FAULTS_KEY], request.app[LIFECYCLE_KEY]
    lifecycle.enter()
    started = time.perf_counter()
    route = route_name(request)
    status = 500
    try:
        if route in DATA_ROUTES:
            if faults.latency_seconds:
                metrics.faults.labels(kind="latency").inc()
                await asyncio.sleep(faults.latency_seconds)
            if faults.should_fail(route):
                metrics.faults.labels(kind="error").inc()
                response: web.StreamResponse = error(500, "injected fault (game day)")
                status = response.status
                return response
        response = await handler(request)
        status = response.status
        if lifecycle.stopping:  # the client's next request goes to another replica
            response.force_close()
        return response
    except web.HTTPException as http_error:
        status = http_error.status
        if status < 400:
            raise
        # aiohttp's own 404, 405 and 413 answer in the same JSON shape as ours.
        allow = http_error.headers.get("Allow")
        return error(status, http_error.reason, {"Allow": allow} if allow else None)
    except asyncio.CancelledError:
        status = 499  # the client went away
        raise
    except Exception:
        log.exception("unhandled error", extra={"route": route, "path": request.path})
        status = 500
        return error(500, "internal error")
    finally:
        metrics.observe(route, status, time.perf_counter() - started)
        lifecycle.leave()


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    if request.app[LIFECYCLE_KEY].stopping:
        return web.Response(status=503, text="shutting down\n")
    if request.app[FAULTS_KEY].draining:
        return web.Response(status=503, text="draining\n")
    why = request.app[READINESS_KEY]()
    if why:
        return web.Response(status=503, text=f"not ready: {why}\n")
    return web.Response(text="ready\n")


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = request.app[METRICS_KEY].exposition()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def application(
    metrics: Metrics,
    faults: Faults,
    readiness: Callable[[], str | None],
    *,
    max_body: int,
    admin_token: str | None,
) -> web.Application:
    """An app of either role: measured, with health, readiness, metrics, and admin when enabled."""
    app = web.Application(middlewares=[observe], client_max_size=max_body)
    app[METRICS_KEY] = metrics
    app[FAULTS_KEY] = faults
    app[READINESS_KEY] = readiness
    app[LIFECYCLE_KEY] = Lifecycle()
    add_operational_routes(app)
    if admin_token:
        add_admin_routes(app, admin_token)
    return app


def add_operational_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz, name="healthz", allow_head=True)
    app.router.add_get("/readyz", readyz, name="readyz", allow_head=True)
    app.router.add_get("/metrics", metrics_endpoint, name="metrics")


def bearer_matches(request: web.Request, token: str) -> bool:
    """The request carries `Authorization: Bearer <token>` (compared in constant time)."""
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return bool(given) and hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode())


def add_admin_routes(app: web.Application, token: str) -> None:
    """Game-day switches behind a bearer token; only added with --enable-admin."""

    def authorized(request: web.Request) -> bool:
        return bearer_matches(request, token)

    async def show(request: web.Request) -> web.Response:
        if not authorized(request):
            return error(401, "a valid admin bearer token is needed")
        return web.json_response(request.app[FAULTS_KEY].describe())

    async def set_faults(request: web.Request) -> web.Response:
        if not authorized(request):
            return error(401, "a valid admin bearer token is needed")
        try:
            body: Any = await request.json()
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            faults = request.app[FAULTS_KEY]
            updated = Faults(
                float(body.get("errorRatio", faults.error_ratio)),
                float(body.get("latencySeconds", faults.latency_seconds)),
            )
            updated.validate()
        except (ValueError, TypeError, json.JSONDecodeError) as why:
            return error(400, str(why))
        faults.error_ratio, faults.latency_seconds = updated.error_ratio, updated.latency_seconds
        log.warning("faults changed", extra=faults.describe())
        return web.json_response(faults.describe())

    async def clear_faults(request: web.Request) -> web.Response:
        if not authorized(request):
            return error(401, "a valid admin bearer token is needed")
        faults = request.app[FAULTS_KEY]
        faults.error_ratio = faults.latency_seconds = 0.0
        return web.json_response(faults.describe())

    async def drain(request: web.Request) -> web.Response:
        if not authorized(request):
            return error(401, "a valid admin bearer token is needed")
        faults = request.app[FAULTS_KEY]
        faults.draining = request.method == "POST"
        log.warning("drain switch", extra={"draining": faults.draining})
        return web.json_response(faults.describe())

    app.router.add_get("/admin/faults", show, name="admin")
    app.router.add_post("/admin/faults", set_faults, name="admin_faults")
    app.router.add_delete("/admin/faults", clear_faults, name="admin_faults_clear")
    app.router.add_post("/admin/drain", drain, name="admin_drain")
    app.router.add_delete("/admin/drain", drain, name="admin_undrain")
