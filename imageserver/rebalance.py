"""The rebalancer: after the topology changes, every storage node sends the images it holds
but no longer owns to their owners, and owes its images to datacenters that are new.

Its only state is what is on disk, so it resumes after any crash. One pass:

1. **New datacenters.** The datacenters this node has already owed its images to are kept
   in `rebalance.json`. A datacenter in the topology but not in that file is owed every image
   here, through the same durable hints the uploads use (`handoff`), and then recorded.
2. **Strays.** An image whose owner shard in this datacenter is another shard is a stray.
   Once the topology's generation has been the current one for `settle` seconds (so the
   frontends have the map too: one that still has the old map would look only among the old
   shards), each stray is sent to the owner's replicas that lack it (variants first, the
   original last), and removed here only once the owner's write quorum holds it. A stray
   with copies still owed to another datacenter waits for those first (its hint lives here).
   At most `rate` images a second (`concurrency` at a time); the pass starts over when the
   map changes.

Reads never depend on it: a frontend looks among all of its datacenter's shards in one
parallel round (`replication.read_rounds`), and read repair copies to the owner.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid

import aiohttp

from imageserver import peers
from imageserver.blobstore import BlobStore, fsync_dir
from imageserver.handoff import Hints
from imageserver.metrics import Metrics
from imageserver.topology import Datacenter, Topology, TopologyWatcher

log = logging.getLogger(__name__)
# Strays appear after a change of the map (and from frontends still on the old one): the
# node lists everything it holds every pass until this long after the last change, then
# every RESCAN seconds.
QUIET_AFTER = 900.0
RESCAN = 600.0


class Rebalancer:
    def __init__(
        self,
        store: BlobStore,
        hints: Hints,
        topology: TopologyWatcher,
        metrics: Metrics,
        *,
        datacenter: str,
        shard: str,
        rate: float = 50.0,
        settle: float = 120.0,
        interval: float = 5.0,
        timeout: float = 10.0,
        token: str | None = None,
        concurrency: int = 8,
    ) -> None:
        self.store = store
        self.hints = hints
        self.topology = topology
        self.metrics = metrics
        self.datacenter = datacenter
        self.shard = shard
        self.rate = rate
        self.settle = settle
        self.interval = interval
        self.timeout = timeout
        self.token = token
        self.concurrency = concurrency
        self._next_start = 0.0
        self.record = store.root / "rebalance.json"
        self._map: Topology | None = None
        self._since = 0.0
        self._session: aiohttp.ClientSession | None = None
        self._warned = False
        self._clean_at: float | None = None  # when a pass last found nothing to move
        self._owed: dict[str, set[str]] = {}  # new datacenter → images owed it so far

    async def run(self) -> None:
        self._session = peers.session(self.timeout, self.token)
        try:
            while True:
                try:
                    await self.pass_once()
                except Exception:  # one bad pass must not end rebalancing for good
                    self.metrics.rebalance_errors.inc()
                    log.exception("rebalance pass failed")
                await asyncio.sleep(self.interval)
        finally:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "run() first"
        return self._session

    def _here(self, topology: Topology) -> Datacenter | None:
        here = topology.datacenter(self.datacenter)
        if here is None or here.shard(self.shard) is None:
            if not self._warned:
                log.warning(
                    "this node is not in the topology: it keeps what it holds",
                    extra={"dc": self.datacenter, "shard": self.shard},
                )
                self._warned = True
            return None
        self._warned = False
        return here

    async def pass_once(self) -> None:
        topology = self.topology.current
        if topology is None:
            return
        here = self._here(topology)
        if here is None:
            return
        if topology != self._map:  # any change, even a hand edit that kept the generation
            self._map, self._since = topology, time.monotonic()
        await self._owe_new_datacenters(topology)
        now = time.monotonic()
        if self._clean_at is not None and now - self._since > QUIET_AFTER and now - self._clean_at < RESCAN:
            return  # long settled and clean: a full listing now and then is enough
        ids = await asyncio.to_thread(self.store.image_ids)
        strays = [image_id for image_id in ids if here.shards_for(image_id)[0].name != self.shard]
        self.metrics.rebalance_remaining.set(len(strays))
        self._clean_at = None if strays else now
        if not strays or now - self._since < self.settle:
            return
        left = len(strays)
        queue = iter(strays)

        async def worker() -> None:
            nonlocal left
            for image_id in queue:
                if self.topology.current is not topology:
                    return  # a newer map: the next pass starts from it
                if image_id in self.hints.pending:
                    continue  # what other datacenters are owed is sent from here first
                await self._pace()
                try:
                    moved = await self._move(topology, here, image_id)
                except Exception:  # one bad image must not end the pass for the others
                    self.metrics.rebalance_errors.inc()
                    log.exception("moving an image failed", extra={"image": image_id})
                    continue
                if moved:
                    left -= 1
                    self.metrics.rebalance_remaining.set(left)

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    async def _pace(self) -> None:
        """At most `rate` images a second, however many workers."""
        now = asyncio.get_running_loop().time()
        start = max(now, self._next_start)
        self._next_start = start + 1 / self.rate
        await asyncio.sleep(start - now)

    async def _move(self, topology: Topology, here: Datacenter, image_id: str) -> bool:
        owner = here.shards_for(image_id)[0]
        names = await asyncio.to_thread(self.store.names_of, image_id)
        if image_id not in names:
            return False  # removed meanwhile
        held = await asyncio.gather(*(peers.has(self.session, base, image_id) for base in owner.replicas))
        lacking = [base for base, has in zip(owner.replicas, held, strict=True) if has is not True]
        sent = await asyncio.gather(*(peers.send(self.session, self.store, base, names) for base in lacking))
        if sum(h is True for h in held) + sum(sent) < topology.write_quorum:
            self.metrics.rebalance_errors.inc()
            log.info(
                "an image could not reach its owner's quorum yet",
                extra={
                    "image": image_id,
                    "shard": owner.name,
                    "holders": sum(h is True for h in held) + sum(sent),
                },
            )
            return False
        # Unless an upload owing copies came in meanwhile: its hint is delivered from here first.
        if not await asyncio.to_thread(
            self.hints.unless_owed, image_id, lambda: self.store.remove_image(image_id)
        ):
            return False
        self.metrics.rebalance_moved.inc()
        return True

    # -- datacenters added -----------------------------------------------------------------

    def _recorded(self, others: set[str]) -> set[str]:
        try:
            return set(json.loads(self.record.read_text())["datacenters"])
        except FileNotFoundError:
            # A node's first start: it holds nothing yet that others lack. Every datacenter
            # known now gets its copies from the uploads' hints.
            self._write_record(others)
            return others
        except (ValueError, KeyError, TypeError, OSError) as why:
            log.error("unreadable rebalance record: owing every datacenter again", extra={"error": str(why)})
            return set()

    def _write_record(self, datacenters: set[str]) -> None:
        temp = self.record.with_name(f"{self.record.name}.{uuid.uuid4().hex}")
        with open(temp, "w") as out:
            json.dump({"datacenters": sorted(datacenters)}, out)
            out.flush()
            os.fsync(out.fileno())
        temp.replace(self.record)
        fsync_dir(self.record.parent)

    async def _owe_new_datacenters(self, topology: Topology) -> None:
        """Owe every image here to datacenters new in the map. Recorded as done only once the
        map has been in force for `settle`: until then a frontend on the old map may store an
        image without owing it to them, so each pass owes what arrived since."""
        others = {dc.name for dc in topology.others(self.datacenter)}
        recorded = await asyncio.to_thread(self._recorded, others)
        new = others - recorded
        for gone in set(self._owed) - new:
            del self._owed[gone]
        if new:
            listed_at = time.monotonic()
            ids = await asyncio.to_thread(self.store.image_ids)
            if not self._owed:
                log.info(
                    "owing every image to new datacenters", extra={"dcs": sorted(new), "images": len(ids)}
                )
            for image_id in ids:
                owed = {dc for dc in new if image_id not in self._owed.setdefault(dc, set())}
                if owed:
                    await asyncio.to_thread(self.hints.owe, image_id, owed)
                    for dc in owed:
                        self._owed[dc].add(image_id)
            if listed_at - self._since < self.settle:
                return  # listed before every frontend had the map: list again next pass
            self._owed.clear()
        if new or recorded - others:
            await asyncio.to_thread(self._write_record, others)
