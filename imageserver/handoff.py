"""Hinted handoff: the copies an upload owes other datacenters, kept on disk by the storage
replicas that accepted it, and delivered in the background.

The frontend's last PUT of an upload (the original's) names the datacenters still owed a
copy (`Imageserver-Owed`). Each replica that stores it also writes a hint file (temp file,
fsync, rename, directory fsync) before it answers, so once the upload is acknowledged its
copies are owed by at least W replicas on disk: nothing is in a frontend's memory, nothing
remote is on the upload's path, and SIGKILL of any one process loses nothing.

Each replica delivers its own hints (`Handoff`): a HEAD on the remote owner shard first (a
sibling replica may have delivered already), then the image's blobs, variants first and
the original last, to the replicas that lack it. A hint is settled for a datacenter once its
write quorum holds the original. A datacenter none of whose replicas answers is backed off
as a whole (1 s, doubling to `max_backoff`, with jitter): a black-holed datacenter costs one
attempt per backoff, not one timeout per hint. An image that fails alone (too large for a
slow link, its replicas full) backs off alone, and the others go on. A datacenter that has
been gone from the topology for `forget_after` is owed nothing: its hints are settled and
counted as `dropped`, never silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from imageserver import peers
from imageserver.blobstore import BlobStore, fsync_dir
from imageserver.metrics import Metrics
from imageserver.topology import DATACENTER_NAME, Datacenter, Topology, TopologyWatcher
from imageserver.variants import IMAGE_ID

log = logging.getLogger(__name__)
OWED_HEADER = "Imageserver-Owed"
MAX_OWED = 32  # datacenters named in one header
DELIVERED, FAILED, UNREACHABLE = "delivered", "failed", "unreachable"
MIN_GAP = 0.2  # seconds between two delivery passes, however often uploads wake them
UNREADABLE = ".unreadable"


class BadHint(ValueError):
    """An `Imageserver-Owed` header we refuse (400)."""


def parse_owed(header: str | None) -> frozenset[str]:
    if not header:
        return frozenset()
    names = [part.strip() for part in header.split(",") if part.strip()]
    if len(names) > MAX_OWED or not all(DATACENTER_NAME.fullmatch(n) for n in names):
        raise BadHint(f"{OWED_HEADER} must list up to {MAX_OWED} datacenter names")
    return frozenset(names)


@dataclass
class Hint:
    image_id: str
    owed: frozenset[str]
    since: float  # wall-clock seconds: the lag survives a restart


class Hints:
    """The hints of one storage node: a file per image under `hints/`, mirrored in memory."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "hints"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # the dict
        # One image at a time: its hint file, and (`locked`) what must not interleave with it.
        self._file_locks = [threading.RLock() for _ in range(64)]
        self.pending: dict[str, Hint] = {}
        for path in self.dir.iterdir():
            self._load(path)

    def _load(self, path: Path) -> None:
        if path.name.endswith(UNREADABLE):
            log.error("an unreadable hint waits for a person", extra={"hint": path.name})
            return
        if not IMAGE_ID.fullmatch(path.name):  # a write cut short by a crash
            path.unlink(missing_ok=True)
            return
        try:
            raw = json.loads(path.read_text())
            owed = raw["owed"]
            if not isinstance(owed, list) or not owed or not all(isinstance(n, str) for n in owed):
                raise ValueError("owed must be a non-empty list of datacenter names")
            hint = Hint(path.name, parse_owed(",".join(owed)), float(raw["since"]))
        except (OSError, ValueError, KeyError, TypeError) as why:
            # Renamed into place only when complete, so this is damage from outside: keep the
            # file for a person, and say so loudly.
            log.error("unreadable hint kept aside", extra={"hint": path.name, "error": str(why)})
            path.replace(path.with_name(path.name + UNREADABLE))
            return
        self.pending[hint.image_id] = hint

    def locked(self, image_id: str) -> threading.RLock:
        """Held while an image is stored with its hint, and while the rebalancer removes it:
        so a removal never slips between an upload's write and the hint it owes."""
        return self._file_locks[int(image_id[:2], 16) % len(self._file_locks)]

    def unless_owed(self, image_id: str, action: Callable[[], None]) -> bool:
        """Run `action` (blocking) if nothing is owed for the image, under its lock."""
        with self.locked(image_id):
            with self._lock:
                if image_id in self.pending:
                    return False
            action()
            return True

    def _write(self, hint: Hint) -> None:
        temp = self.dir / f"{hint.image_id}.{uuid.uuid4().hex}"
        body = json.dumps({"owed": sorted(hint.owed), "since": hint.since}).encode()
        try:
            with open(temp, "wb") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            temp.replace(self.dir / hint.image_id)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        fsync_dir(self.dir)

    def owe(self, image_id: str, datacenters: Iterable[str]) -> None:
        """Record, durably, that `datacenters` are owed the image (blocking: call in a thread)."""
        wanted = frozenset(datacenters)
        if not wanted:
            return
        with self.locked(image_id):
            with self._lock:
                known = self.pending.get(image_id)
            if known is not None and wanted <= known.owed:
                return
            if known is None:
                hint = Hint(image_id, wanted, time.time())
            else:
                hint = Hint(image_id, wanted | known.owed, known.since)
            self._write(hint)
            with self._lock:
                self.pending[image_id] = hint

    def settle(self, image_id: str, datacenter: str) -> None:
        """The datacenter has its copy (blocking: call in a thread). A lost unlink only means
        one more delivery after a crash, which is idempotent: no directory fsync needed."""
        with self.locked(image_id):
            with self._lock:
                known = self.pending.get(image_id)
            if known is None or datacenter not in known.owed:
                return
            rest = known.owed - {datacenter}
            if rest:
                hint = Hint(image_id, rest, known.since)
                self._write(hint)
                with self._lock:
                    self.pending[image_id] = hint
            else:
                (self.dir / image_id).unlink(missing_ok=True)
                with self._lock:
                    self.pending.pop(image_id, None)

    def owed(self) -> int:
        """Copies owed: one per (image, datacenter)."""
        with self._lock:
            return sum(len(hint.owed) for hint in self.pending.values())

    def lag(self, now: float | None = None) -> float:
        """Age of the oldest copy owed, in seconds; 0 when nothing is owed."""
        with self._lock:
            oldest = min((hint.since for hint in self.pending.values()), default=None)
        return 0.0 if oldest is None else max(0.0, (time.time() if now is None else now) - oldest)

    def by_datacenter(self) -> dict[str, list[str]]:
        """The images owed to each datacenter, oldest first."""
        with self._lock:
            hints = sorted(self.pending.values(), key=lambda hint: hint.since)
        work: dict[str, list[str]] = {}
        for hint in hints:
            for datacenter in sorted(hint.owed):
                work.setdefault(datacenter, []).append(hint.image_id)
        return work


class Handoff:
    """Delivers one storage node's hints to the datacenters they name."""

    def __init__(
        self,
        hints: Hints,
        store: BlobStore,
        topology: TopologyWatcher,
        metrics: Metrics,
        *,
        timeout: float = 10.0,
        concurrency: int = 16,
        max_backoff: float = 60.0,
        interval: float = 1.0,
        token: str | None = None,
        forget_after: float = 120.0,
    ) -> None:
        self.hints = hints
        self.store = store
        self.topology = topology
        self.metrics = metrics
        self.timeout = timeout
        self.token = token
        self.concurrency = concurrency
        self.max_backoff = max_backoff
        self.interval = interval
        self.forget_after = forget_after
        self._failures: dict[str, int] = {}  # per datacenter that does not answer
        self._not_before: dict[str, float] = {}
        self._image_failures: dict[tuple[str, str], int] = {}  # per (datacenter, image) that fails
        self._image_not_before: dict[tuple[str, str], float] = {}
        self._absent_since: dict[str, float] = {}
        self._delivering: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        self._session = peers.session(self.timeout, self.token)
        try:
            while True:
                try:
                    await self.deliver_due(wait=False)
                except Exception:  # one bad pass must not end delivery for good
                    log.exception("handoff pass failed")
                await asyncio.sleep(MIN_GAP)  # uploads wake it: a pass lists every hint
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.interval):
                        await self._wake.wait()
                self._wake.clear()
        finally:
            for task in list(self._delivering.values()):
                task.cancel()
            await asyncio.gather(*self._delivering.values(), return_exceptions=True)
            await self._session.close()

    async def deliver_due(self, *, wait: bool = True) -> None:
        """Start delivering to every datacenter that is due and not already being delivered
        to (one delivery per datacenter at a time: a wake-up per upload must not pile up
        passes on a datacenter that hangs); with `wait`, until they are done."""
        topology = self.topology.current
        if topology is None:
            return
        now = time.monotonic()
        work = await asyncio.to_thread(self.hints.by_datacenter)  # off the loop: it sorts them all
        for name, images in work.items():
            if name in self._delivering or self._not_before.get(name, 0.0) > now:
                continue
            task = asyncio.ensure_future(self._deliver_to(topology, name, images))
            self._delivering[name] = task
            task.add_done_callback(functools.partial(self._delivered, name))
        if wait and self._delivering:
            await asyncio.gather(*self._delivering.values(), return_exceptions=True)

    def _delivered(self, name: str, _: asyncio.Task[None]) -> None:
        self._delivering.pop(name, None)

    async def _deliver_to(self, topology: Topology, name: str, images: list[str]) -> None:
        datacenter = topology.datacenter(name)
        now = time.monotonic()
        if datacenter is None:
            # Gone from the map for a while (not a bad edit soon undone): nothing is owed it.
            if now - self._absent_since.setdefault(name, now) < self.forget_after:
                return
            log.warning("datacenter left the topology: its copies are no longer owed", extra={"dc": name})
            for image_id in images:
                await asyncio.to_thread(self.hints.settle, image_id, name)
                self.metrics.replications.labels(result="dropped").inc()
            return
        self._absent_since.pop(name, None)
        queue: Iterator[str] = (i for i in images if self._image_not_before.get((name, i), 0.0) <= now)
        unreachable = asyncio.Event()

        async def worker() -> None:
            for image_id in queue:
                if unreachable.is_set():
                    return
                try:
                    outcome = await self._deliver(topology, datacenter, image_id)
                except Exception:  # one bad image must not stop the others
                    log.exception("delivering a copy failed", extra={"image": image_id, "dc": name})
                    outcome = FAILED
                if outcome == DELIVERED:
                    self._image_failures.pop((name, image_id), None)
                    self._image_not_before.pop((name, image_id), None)
                    await asyncio.to_thread(self.hints.settle, image_id, name)
                elif outcome == UNREACHABLE:
                    unreachable.set()
                else:  # this image only (too large for the link, replicas full…): it waits alone
                    failures = self._image_failures[(name, image_id)] = (
                        self._image_failures.get((name, image_id), 0) + 1
                    )
                    self._image_not_before[(name, image_id)] = time.monotonic() + self._backoff(failures)
                    self.metrics.replications.labels(result="retry").inc()

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        if unreachable.is_set():
            failures = self._failures[name] = self._failures.get(name, 0) + 1
            delay = self._backoff(failures)
            self._not_before[name] = time.monotonic() + delay
            self.metrics.replications.labels(result="retry").inc()
            log.info("a datacenter does not answer", extra={"dc": name, "retry_in": round(delay, 1)})
        else:
            self._failures.pop(name, None)

    def _backoff(self, failures: int) -> float:
        return min(self.max_backoff, 2.0 ** (failures - 1)) * random.uniform(0.8, 1.2)

    async def _deliver(self, topology: Topology, datacenter: Datacenter, image_id: str) -> str:
        """DELIVERED once the datacenter's write quorum holds the image; UNREACHABLE when no
        replica of its shard answered at all; FAILED when this image could not get there."""
        shard = datacenter.shards_for(image_id)[0]
        held = await asyncio.gather(*(peers.has(self.session, base, image_id) for base in shard.replicas))
        if all(has is None for has in held):
            return UNREACHABLE
        holders = sum(has is True for has in held)
        if holders >= topology.write_quorum:
            self.metrics.replications.labels(result="ok").inc()
            return DELIVERED
        names = await asyncio.to_thread(self.store.names_of, image_id)
        if image_id not in names:
            # Only damage from outside removes an original that has a hint: say so, once.
            log.error("an owed image is gone", extra={"image": image_id, "dc": datacenter.name})
            self.metrics.replications.labels(result="lost").inc()
            return DELIVERED
        lacking = [base for base, has in zip(shard.replicas, held, strict=True) if has is not True]
        sent = await asyncio.gather(*(peers.send(self.session, self.store, base, names) for base in lacking))
        if holders + sum(sent) >= topology.write_quorum:
            self.metrics.replications.labels(result="ok").inc()
            return DELIVERED
        return FAILED

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "run() first"
        return self._session
