"""Storage node to storage node: is a blob there, and send an image's files to a replica.
Used by the handoff (copies owed to other datacenters) and the rebalancer (images to their
new owners after a resharding)."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import BinaryIO

import aiohttp
from yarl import URL

from imageserver.blobstore import BlobStore, is_variant

log = logging.getLogger(__name__)


MIN_RATE = 1 << 20  # bytes a second a copy may take at worst before it counts as failed
# Replicas are addressed by name (a StatefulSet pod's DNS name), and a pod that restarts keeps
# its name, not its address. An address is kept as long as cluster DNS gives it (Kubernetes'
# records live 5 s) and forgotten when a request to it fails: kept 30 s (10 s between storage
# nodes, aiohttp's default), frontends knocked at a restarted storage pod's old address, and
# a rollout failed reads and uploads in its datacenter for a minute.
DNS_TTL = 5


def connector(limit: int, per_host: int) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(limit=limit, limit_per_host=per_host, ttl_dns_cache=DNS_TTL)


def forget(session: aiohttp.ClientSession, base: str) -> None:
    """After a request to a replica failed: its name is looked up again next time (it may
    have moved)."""
    url = URL(base)  # keyed as aiohttp keys its cache: the name as written, the port
    if isinstance(session.connector, aiohttp.TCPConnector) and url.raw_host is not None:
        session.connector.clear_dns_cache(url.raw_host, url.port)


async def has(session: aiohttp.ClientSession, base: str, name: str) -> bool | None:
    """Whether the replica holds the blob; None when it did not answer."""
    try:
        async with session.head(f"{base}/v1/blobs/{name}") as response:
            return response.status == 200 if response.status in (200, 404) else None
    except (aiohttp.ClientError, TimeoutError):
        forget(session, base)
        return None


async def send(session: aiohttp.ClientSession, store: BlobStore, base: str, names: list[str]) -> bool:
    """PUT the named files to one replica, in order (the original last: its presence there
    implies the rest); True once every one is stored. A variant is checked first: a damaged
    one is set aside here, not sent (it is derived data: the owner renders it again)."""
    for name in names:
        try:
            if is_variant(name):
                variant = await asyncio.to_thread(store.read_variant, name)
                if variant is None:
                    continue
                if not await _put(session, base, name, variant):
                    return False
                continue
            path = store.open_path(name)
            if path is None:
                continue
            with open(path, "rb") as body:
                if not await _put(session, base, name, body):
                    return False
        except (aiohttp.ClientError, TimeoutError, OSError) as why:
            log.debug("copy failed", extra={"replica": base, "blob": name, "error": repr(why)})
            forget(session, base)
            return False
    return True


async def _put(session: aiohttp.ClientSession, base: str, name: str, body: bytes | BinaryIO) -> bool:
    # The session's timeout, plus time for the bytes: a large original on a busy link is slow,
    # not failed.
    size = len(body) if isinstance(body, bytes) else os.fstat(body.fileno()).st_size
    base_timeout = session.timeout.total or 10.0
    timeout = aiohttp.ClientTimeout(total=base_timeout + size / MIN_RATE, connect=session.timeout.connect)
    async with session.put(f"{base}/v1/blobs/{name}", data=body, timeout=timeout) as response:
        return response.status in (200, 201)


def session(timeout: float, token: str | None) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=connector(64, 8),
        timeout=aiohttp.ClientTimeout(total=timeout, connect=min(2.0, timeout), sock_read=timeout / 2),
        headers={"Authorization": f"Bearer {token}"} if token else None,
    )
