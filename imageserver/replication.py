"""Blobs on the storage nodes of the topology: quorum writes, fallback reads, read repair,
and copies to the other datacenters.

An image's blobs (original and variants) live together on the shard its id hashes to. A
write goes to every replica of that shard in the local datacenter and succeeds once
`writeQuorum` replicas hold all of it. The other datacenters get their copy from the storage
replicas that accepted it (async, the default: the original's PUT names the datacenters
owed, and each replica keeps a durable hint, see `handoff`), or before the upload is
acknowledged (sync). Nothing remote is ever on an async upload's path.

A read asks in a fixed number of parallel rounds under one deadline (`read_rounds`): the
local owner shard (one replica first, the others when it misses or is slow: a hedged read),
then the local datacenter's other shards, the owner once more (an image the rebalancer moved
between the first two rounds is there by then), then the other datacenters. A miss therefore
costs four round trips, never a walk of replicas one after another, and one re-read of the
topology file (a frontend that took a newer map first may have stored it on a new shard).
Local owner replicas other than the one that answered with the blob are written back in
the background (read repair): those that said "not here" at once, the others (not asked, too
slow for the hedge, failed) once a HEAD says they lack it. That also moves ids onto a newly
added shard as they are read.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from imageserver import peers
from imageserver.handoff import OWED_HEADER
from imageserver.metrics import Metrics
from imageserver.stores import Unavailable
from imageserver.topology import Datacenter, Shard, Topology, TopologyWatcher

log = logging.getLogger(__name__)
Place = tuple[Datacenter, Shard]  # a shard in a datacenter


class ReplicatedStore:
    def __init__(
        self,
        topology: TopologyWatcher,
        datacenter: str,
        metrics: Metrics,
        *,
        timeout: float = 5.0,
        read_deadline: float = 3.0,
        hedge_after: float = 0.05,
        remote_patience: float = 1.0,
        token: str | None = None,
    ) -> None:
        self.topology = topology
        self.datacenter = datacenter
        self.metrics = metrics
        self.timeout = aiohttp.ClientTimeout(total=timeout, connect=min(1.0, timeout))
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.read_deadline = read_deadline
        self.hedge_after = hedge_after  # a local storage read takes ~1 ms; 50 ms is a slow one
        self.remote_patience = remote_patience
        self._lookups: dict[str, asyncio.Future[bytes | None]] = {}
        self._repairing: set[tuple[str, str]] = set()
        self._headers = {"Authorization": f"Bearer {token}"} if token else None  # storage writes

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=peers.connector(256, 32), timeout=self.timeout, headers=self._headers
        )

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

    async def _put_failure(self, base: str, name: str, data: bytes, owed: Sequence[str] = ()) -> str:
        """Why one blob was not stored on one replica; empty when it was. (aiohttp sends an
        idempotent request again, once, when its connection drops without an answer.)"""
        headers = {OWED_HEADER: ",".join(owed)} if owed else None
        try:
            async with self.session.put(f"{base}/v1/blobs/{name}", data=data, headers=headers) as response:
                return "" if response.status in (200, 201) else f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as error:
            peers.forget(self.session, base)
            return repr(error)[:200]

    async def _put_all(
        self, base: str, blobs: Mapping[str, bytes], image_id: str, owed: Sequence[str] = ()
    ) -> str:
        """All blobs onto one replica, the original last (its presence implies the rest) and
        with the datacenters still owed a copy, which the replica then keeps as a hint. Why
        not, empty when they were."""
        for name in sorted(blobs, key=lambda n: n == image_id):
            failure = await self._put_failure(base, name, blobs[name], owed if name == image_id else ())
            if failure:
                return failure
        return ""

    async def _get_blob(
        self, base: str, name: str, answering: asyncio.Event | None = None
    ) -> tuple[int, bytes | None]:
        """Status and body; `answering` is set once a 200 starts to arrive."""
        try:
            async with self.session.get(f"{base}/v1/blobs/{name}") as response:
                if response.status == 200:
                    if answering is not None:
                        answering.set()
                    return 200, await response.read()
                return response.status, None
        except (aiohttp.ClientError, TimeoutError):
            peers.forget(self.session, base)
            return 0, None

    # -- writes ----------------------------------------------------------------------------

    async def _replicate(
        self, dc: Datacenter, image_id: str, blobs: Mapping[str, bytes], owed: Sequence[str] = ()
    ) -> int:
        """Write to every replica of the owner shard in `dc`; returns how many hold it all."""
        shard = dc.shards_for(image_id)[0]
        failures = await asyncio.gather(
            *(self._put_all(base, blobs, image_id, owed) for base in shard.replicas)
        )
        missed = {base: why for base, why in zip(shard.replicas, failures, strict=True) if why}
        if missed:  # the replicas that did not take it, and why: an operator's first question
            log.warning(
                "replica writes failed", extra={"image": image_id, "datacenter": dc.name, "failed": missed}
            )
        return len(failures) - len(missed)

    async def put(self, image_id: str, blobs: Mapping[str, bytes]) -> None:
        topology, local = self._current()
        others = topology.others(self.datacenter)
        owed = [dc.name for dc in others] if topology.cross_datacenter == "async" else []
        acked = await self._replicate(local, image_id, blobs, owed)
        if acked < topology.write_quorum:
            self.metrics.quorum_failures.inc()
            raise Unavailable(f"only {acked} of {topology.write_quorum} required replicas stored the image")
        if topology.cross_datacenter == "sync":
            results = await asyncio.gather(*(self._replicate(dc, image_id, blobs) for dc in others))
            short = [dc.name for dc, n in zip(others, results, strict=True) if n < topology.write_quorum]
            if short:
                self.metrics.quorum_failures.inc()
                raise Unavailable(f"synchronous copy to {', '.join(short)} did not reach its quorum")

    # -- reads ---------------------------------------------------------------------------

    async def get(self, image_id: str, name: str) -> bytes | None:
        """The blob from wherever it is, None when the replicas that must hold it agree it
        does not exist, `Unavailable` when that cannot be known by the deadline. Concurrent
        reads of one blob share one lookup, which a caller that hangs up does not cancel."""
        lookup = self._lookups.get(name)
        if lookup is None:
            lookup = asyncio.ensure_future(self._lookup(image_id, name))
            self._lookups[name] = lookup
            lookup.add_done_callback(lambda _: self._lookups.pop(name, None))
            # Retrieved even when every caller has hung up, so it is not logged as lost.
            lookup.add_done_callback(lambda done: done.cancelled() or done.exception())
        return await asyncio.shield(lookup)

    async def _lookup(self, image_id: str, name: str) -> bytes | None:
        topology, _ = self._current()
        data = await self._search(topology, image_id, name)
        if data is not None:
            return data
        # Every shard this map knows said no. A frontend that took a newer map first may have
        # stored the image on a shard this one has not heard of yet (the watcher polls): the
        # file is read again before a 404, and a newer map is searched too.
        self.topology.refresh()
        newer, _ = self._current()
        if newer is topology:
            return None
        return await self._search(newer, image_id, name)

    async def _search(self, topology: Topology, image_id: str, name: str) -> bytes | None:
        evidence = _Evidence(topology.write_quorum)
        rounds = read_rounds(topology, self.datacenter, image_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_deadline
        plan = list(rounds)
        if len(rounds) > 1 and rounds[1][0][0].name == self.datacenter:
            # The owner once more after the other shards missed: a rebalancer removes an image
            # from a shard only once its owner holds it, so one that moved between the two
            # rounds is on the owner now. Asked again only on a miss.
            plan.insert(2, rounds[0])
        for number, places in enumerate(plan):
            if number == 2 and places is rounds[0]:
                evidence.forget(places)
            remote = places[0][0].name != self.datacenter
            budget = deadline - loop.time()
            try:
                # Another datacenter only has what was uploaded there and not yet copied
                # here: worth a short wait, never worth a 503 for every unknown id while it
                # is down or drained.
                async with asyncio.timeout(min(budget, self.remote_patience) if remote else budget):
                    data = await self._round(
                        places, name, evidence, hedge=self.hedge_after if number == 0 else None
                    )
            except TimeoutError:
                if not remote:
                    raise Unavailable(
                        f"no answer from enough replicas within {self.read_deadline:g} s"
                    ) from None
                data = None
            if data is not None:
                self._repair_later(rounds[0], name, data, evidence)
                return data
        here = [place for places in rounds for place in places if place[0].name == self.datacenter]
        unknown = [shard.name for dc, shard in here if not evidence.rules_out(dc, shard)]
        if unknown:
            raise Unavailable(f"too few replicas of {', '.join(unknown[:4])} answered")
        return None

    async def _round(
        self, places: Sequence[Place], name: str, evidence: _Evidence, *, hedge: float | None
    ) -> bytes | None:
        """Ask every replica of `places` at once; with `hedge`, the first one alone until it
        misses, fails or has not started to answer within that (a large blob still arriving is
        not slow). The first copy wins; the round also ends as soon as every shard in it is
        known not to hold the blob (a black-holed replica is not waited for)."""
        asks = [
            (dc, shard, base)
            for dc, shard in places
            for base in random.sample(shard.replicas, len(shard.replicas))
        ]
        waiting: dict[asyncio.Task[tuple[int, bytes | None]], tuple[Datacenter, Shard, str]] = {}

        answering = asyncio.Event()

        def ask(batch: Sequence[tuple[Datacenter, Shard, str]]) -> None:
            for dc, shard, base in batch:
                fetch = self._get_blob(base, name, answering)
                waiting[asyncio.ensure_future(fetch)] = (dc, shard, base)

        held_back = list(asks[1:]) if hedge is not None else []
        ask(asks[:1] if hedge is not None else asks)
        try:
            while waiting:
                patience = hedge if held_back and not answering.is_set() else None
                done, _ = await asyncio.wait(waiting, timeout=patience, return_when=asyncio.FIRST_COMPLETED)
                if not done and answering.is_set():
                    continue  # on its way: no need to ask the others
                for task in done:
                    dc, shard, base = waiting.pop(task)
                    status, data = task.result()
                    if data is not None:
                        evidence.held_at.add(base)
                        return data
                    evidence.record(dc, shard, base, status)
                if held_back:  # the first one missed, failed or is slow: ask the rest now
                    ask(held_back)
                    held_back = []
                if all(evidence.rules_out(dc, shard) for dc, shard in places):
                    return None
            return None
        finally:
            for task in waiting:
                task.cancel()

    async def _has_blob(self, base: str, name: str) -> bool | None:
        try:
            async with self.session.head(f"{base}/v1/blobs/{name}") as response:
                return response.status == 200 if response.status in (200, 404) else None
        except (aiohttp.ClientError, TimeoutError):
            peers.forget(self.session, base)
            return None

    def _repair_later(self, owners: Sequence[Place], name: str, data: bytes, evidence: _Evidence) -> None:
        """Write the blob back to the local owner replicas that said they lack it, and check
        every other one but the replica that answered with it: a replica that missed a write,
        or an owner that is new since a resharding, gets it. Not only the ones never asked (a
        hedged read asks one): one just back from a crash is often too slow for the hedge,
        and its cancelled answer said nothing."""
        missing, unsure = repair_candidates(owners, evidence)
        todo = [base for base in missing + unsure if (base, name) not in self._repairing]
        if todo:
            self._repairing.update((base, name) for base in todo)
            self._spawn(self._repair(todo, set(missing), name, data))

    async def _repair(self, replicas: list[str], known_missing: set[str], name: str, data: bytes) -> None:
        try:
            for base in replicas:
                if base not in known_missing:
                    held = await self._has_blob(base, name)
                    if held is not False:
                        if held is None:  # down or failing: the next read of it tries again
                            log.debug("read repair skipped a replica", extra={"replica": base, "blob": name})
                        continue
                failure = await self._put_failure(base, name, data)
                if failure:
                    log.info("read repair failed", extra={"replica": base, "blob": name, "error": failure})
                else:
                    self.metrics.repairs.inc()
        finally:
            self._repairing.difference_update((base, name) for base in replicas)


def repair_candidates(owners: Sequence[Place], evidence: _Evidence) -> tuple[list[str], list[str]]:
    """The owner replicas known to lack the blob (they said 404), and those to ask first
    (not asked, or asked without an answer that counts): never the one that had it."""
    replicas = list(dict.fromkeys(base for _, shard in owners for base in shard.replicas))
    missing = [base for base in replicas if base in evidence.absent_at]
    unsure = [base for base in replicas if base not in evidence.absent_at and base not in evidence.held_at]
    return missing, unsure


def read_rounds(topology: Topology, local: str, image_id: str) -> list[list[Place]]:
    """Where a read looks, in parallel rounds, from the topology alone: the local owner
    shard; the local datacenter's other shards (an image stored before a resharding, in
    whatever order the shards were added); the owner shard in every other datacenter (an
    upload there whose copy has not arrived yet). Rounds with nothing to ask are left out."""
    here = topology.datacenter(local)
    assert here is not None
    ranked = list(here.shards_for(image_id))
    others = sorted(topology.others(local), key=lambda dc: (dc.drained, -dc.weight, dc.name))
    rounds = [
        [(here, ranked[0])],
        [(here, shard) for shard in ranked[1:]],
        [(dc, dc.shards_for(image_id)[0]) for dc in others if dc.shards],
    ]
    return [places for places in rounds if places]


@dataclass
class _Evidence:
    """What the replicas asked so far said about one blob."""

    write_quorum: int
    absent_at: set[str] = field(default_factory=set)  # replicas that answered 404
    held_at: set[str] = field(default_factory=set)  # the replica that answered with the blob
    absent: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # shard → replicas

    def record(self, dc: Datacenter, shard: Shard, base: str, status: int) -> None:
        if status == 404:
            self.absent_at.add(base)
            self.absent.setdefault((dc.name, shard.name), set()).add(base)

    def forget(self, places: Sequence[Place]) -> None:
        """Drop what these shards said, to ask them again."""
        for dc, shard in places:
            gone = self.absent.pop((dc.name, shard.name), set())
            self.absent_at.difference_update(gone)

    def rules_out(self, dc: Datacenter, shard: Shard) -> bool:
        """An acknowledged write is on `writeQuorum` replicas of its shard, so once
        R - W + 1 of them say 404, that shard cannot hold an acknowledged copy."""
        needed = max(1, len(set(shard.replicas)) - self.write_quorum + 1)
        return len(self.absent.get((dc.name, shard.name), ())) >= needed
