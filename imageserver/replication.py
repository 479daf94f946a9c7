"""Blobs on the storage nodes of the topology: quorum writes, fallback reads, read repair,
and copies to the other datacenters.

An image's blobs (original and variants) live together on the shard its id hashes to. A
write goes to every replica of that shard in the local datacenter and succeeds once
`writeQuorum` replicas hold all of it. The other datacenters get their copy from a queue
(async, the default) or before the upload is acknowledged (sync).

A read tries the local owner shard's replicas, then the shard that owned the id before the
last resharding (rendezvous hashing's second choice), then the other datacenters. Replicas
of owner shards that answered "not here", and the local owner replicas that were not asked,
are checked and written back in the background (read repair). That also moves ids onto a
newly added shard as they are read.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from imageserver.metrics import Metrics
from imageserver.stores import Unavailable
from imageserver.topology import Datacenter, Topology, TopologyWatcher

log = logging.getLogger(__name__)
RETRY_DELAYS = (0.5, 1, 2, 5, 10, 30)


@dataclass
class _Copy:
    datacenter: str
    image_id: str
    blobs: Mapping[str, bytes]
    attempt: int = 0


@dataclass
class _ReadOutcome:
    data: bytes | None = None
    missing: list[str] = field(default_factory=list)  # owner replicas that lack the blob
    unasked: list[str] = field(default_factory=list)  # owner replicas not asked before the hit
    errors: int = 0


class ReplicatedStore:
    def __init__(
        self,
        topology: TopologyWatcher,
        datacenter: str,
        metrics: Metrics,
        *,
        timeout: float = 5.0,
        queue_size: int = 256,
    ) -> None:
        self.topology = topology
        self.datacenter = datacenter
        self.metrics = metrics
        self.timeout = aiohttp.ClientTimeout(total=timeout, connect=min(1.0, timeout))
        self.queue: asyncio.Queue[_Copy] = asyncio.Queue(maxsize=queue_size)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=32, ttl_dns_cache=30)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        self._spawn(self._copy_worker())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "start() first"
        return self._session

    def _current(self) -> tuple[Topology, Datacenter]:
        topology = self.topology.current
        if topology is None:
            raise Unavailable("no topology loaded yet")
        local = topology.datacenter(self.datacenter)
        if local is None:
            raise Unavailable(f"datacenter {self.datacenter} is not in the topology")
        return topology, local

    def readiness(self) -> str | None:
        try:
            self._current()
        except Unavailable as why:
            return str(why)
        return None

    # -- storage node calls ----------------------------------------------------------------

    async def _put_blob(self, base: str, name: str, data: bytes) -> bool:
        try:
            async with self.session.put(f"{base}/v1/blobs/{name}", data=data) as response:
                return response.status in (200, 201)
        except (aiohttp.ClientError, TimeoutError) as error:
            log.debug("put failed", extra={"replica": base, "blob": name, "error": repr(error)})
            return False

    async def _put_all(self, base: str, blobs: Mapping[str, bytes], image_id: str) -> bool:
        """All blobs onto one replica, the original last (its presence implies the rest)."""
        for name in sorted(blobs, key=lambda n: n == image_id):
            if not await self._put_blob(base, name, blobs[name]):
                return False
        return True

    async def _get_blob(self, base: str, name: str) -> tuple[int, bytes | None]:
        try:
            async with self.session.get(f"{base}/v1/blobs/{name}") as response:
                if response.status == 200:
                    return 200, await response.read()
                return response.status, None
        except (aiohttp.ClientError, TimeoutError):
            return 0, None

    # -- writes ----------------------------------------------------------------------------

    async def _replicate(self, dc: Datacenter, image_id: str, blobs: Mapping[str, bytes]) -> int:
        """Write to every replica of the owner shard in `dc`; returns how many hold it all."""
        shard = dc.shards_for(image_id)[0]
        acks = await asyncio.gather(*(self._put_all(base, blobs, image_id) for base in shard.replicas))
        return sum(acks)

    async def put(self, image_id: str, blobs: Mapping[str, bytes]) -> None:
        topology, local = self._current()
        acked = await self._replicate(local, image_id, blobs)
        if acked < topology.write_quorum:
            self.metrics.quorum_failures.inc()
            raise Unavailable(f"only {acked} of {topology.write_quorum} required replicas stored the image")
        others = topology.others(self.datacenter)
        if topology.cross_datacenter == "sync":
            results = await asyncio.gather(*(self._replicate(dc, image_id, blobs) for dc in others))
            short = [dc.name for dc, n in zip(others, results, strict=True) if n < topology.write_quorum]
            if short:
                self.metrics.quorum_failures.inc()
                raise Unavailable(f"synchronous copy to {', '.join(short)} did not reach its quorum")
            return
        for dc in others:
            await self.queue.put(_Copy(dc.name, image_id, blobs))  # waits when full: backpressure
            self.metrics.replication_queue.set(self.queue.qsize())

    async def _copy_worker(self) -> None:
        while True:
            copy = await self.queue.get()
            self.metrics.replication_queue.set(self.queue.qsize())
            try:
                await self._send_copy(copy)
            except Exception:  # never let one copy stop the queue
                log.exception("cross-datacenter copy failed", extra={"image": copy.image_id})
            finally:
                self.queue.task_done()

    async def _send_copy(self, copy: _Copy) -> None:
        topology = self.topology.current
        dc = topology.datacenter(copy.datacenter) if topology else None
        if topology is None or dc is None:
            self.metrics.replications.labels(result="dropped").inc()
            return
        acked = await self._replicate(dc, copy.image_id, copy.blobs)
        if acked >= topology.write_quorum:
            self.metrics.replications.labels(result="ok").inc()
            return
        if copy.attempt >= len(RETRY_DELAYS):
            # Read repair still brings the image over when it is read there.
            self.metrics.replications.labels(result="gave_up").inc()
            log.error("giving up a cross-datacenter copy", extra={"image": copy.image_id, "dc": dc.name})
            return
        self.metrics.replications.labels(result="retry").inc()
        delay = RETRY_DELAYS[copy.attempt]
        copy.attempt += 1
        self._spawn(self._requeue_later(copy, delay))

    async def _requeue_later(self, copy: _Copy, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.queue.put(copy)
        self.metrics.replication_queue.set(self.queue.qsize())

    # -- reads -----------------------------------------------------------------------------

    async def _read_dc(self, dc: Datacenter, image_id: str, name: str, outcome: _ReadOutcome) -> bool:
        for rank, shard in enumerate(dc.shards_for(image_id)[:2]):
            replicas = list(shard.replicas)
            random.shuffle(replicas)  # spread reads over the replicas
            for position, base in enumerate(replicas):
                status, data = await self._get_blob(base, name)
                if data is not None:
                    outcome.data = data
                    if rank == 0:
                        outcome.unasked = replicas[position + 1 :]
                    return True
                if status == 404:
                    if rank == 0:
                        outcome.missing.append(base)
                else:
                    outcome.errors += 1
        return False

    def _order(self, topology: Topology, local: Datacenter) -> Iterable[Datacenter]:
        yield local
        yield from sorted(topology.others(self.datacenter), key=lambda dc: (dc.drained, -dc.weight, dc.name))

    async def get(self, image_id: str, name: str) -> bytes | None:
        topology, local = self._current()
        outcome = _ReadOutcome()
        for dc in self._order(topology, local):
            if await self._read_dc(dc, image_id, name, outcome):
                break
        if outcome.data is None:
            if outcome.errors:
                raise Unavailable("no replica that answered has the image, and some did not answer")
            return None
        if outcome.missing or outcome.unasked:
            self._spawn(self._repair(outcome.missing, outcome.unasked, name, outcome.data))
        return outcome.data

    async def _has_blob(self, base: str, name: str) -> bool | None:
        try:
            async with self.session.head(f"{base}/v1/blobs/{name}") as response:
                return response.status == 200 if response.status in (200, 404) else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def _repair(self, missing: list[str], unasked: list[str], name: str, data: bytes) -> None:
        lacking = list(missing)
        for base in unasked:
            if await self._has_blob(base, name) is False:
                lacking.append(base)
        for base in lacking:
            if await self._put_blob(base, name, data):
                self.metrics.repairs.inc()
