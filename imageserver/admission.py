"""Admission before work: what a request will cost is known before it is done, and it is
admitted, made to wait a bounded time, or refused at once.

Two gates share out what a process has: memory (a byte budget) and render threads. A gate
has a waiting room of bounded size and bounded wait; past either, the request is shed with
503 and `Retry-After` (the server is busy, try again), never queued without end. When room
frees, the waiter whose client holds the least goes first, so one client's backlog cannot
stand in front of everyone else. A client may hold at most a share of a gate (half of the
memory: past it, its requests wait), and have only so many expensive requests in flight at
once (429 past it), which also bounds how much of a waiting room one client can fill. A
waiter whose client hangs up leaves the room (its task is cancelled), so abandoned work is
never started.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import itertools
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
RETRY_AFTER_SECONDS = 1


class Shed(Exception):
    """Refused by admission: the status (413, 429, 503), the reason as a metric label, and
    a message for people."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def retry_after(self) -> int | None:
        # A 413 will never fit, however long the client waits.
        return RETRY_AFTER_SECONDS if self.status in (429, 503) else None


@dataclass(eq=False)
class Grant:
    """What one request holds of a gate; give it back exactly once with `Gate.release`."""

    weight: int
    client: str
    released: bool = False


@dataclass(eq=False)
class _Waiter:
    grant: Grant
    order: int
    ready: asyncio.Future[None] = field(repr=False)


class Gate:
    """A capacity shared by weight, with a bounded, fair waiting room."""

    def __init__(
        self,
        name: str,
        capacity: int,
        *,
        max_waiting: int,
        max_wait: float,
        on_change: Callable[[Gate], None] = lambda gate: None,
        show: Callable[[int], str] = str,
        client_share: float = 1.0,
        on_abandon: Callable[[Gate], None] = lambda gate: None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"the {name} gate needs a capacity of at least 1")
        self.name = name
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.max_wait = max_wait
        self.in_use = 0
        self._on_change = on_change
        self._show = show
        self._on_abandon = on_abandon
        self.client_limit = max(1, int(capacity * client_share))  # what one client may hold
        self._waiting: list[_Waiter] = []
        self._held: Counter[str] = Counter()
        # Grants from the waiting room since it was last empty: between clients that hold
        # nothing, the one served less goes first (with one slot, everyone holds nothing
        # whenever a grant is made).
        self._served: Counter[str] = Counter()
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _take(self, grant: Grant) -> None:
        self.in_use += grant.weight
        self._held[grant.client] += grant.weight

    async def acquire(self, weight: int, client: str) -> Grant:
        """Room for `weight`, now or after a bounded wait; `Shed` otherwise."""
        if weight > self.client_limit:
            raise Shed(
                413,
                f"{self.name}_exceeds_capacity",
                f"this request needs {self._show(weight)} of {self.name} to process; "
                f"the server gives one client at most {self._show(self.client_limit)}",
            )
        grant = Grant(weight, client)
        fits = self._held[client] + weight <= self.client_limit  # past its share, a client waits
        if not self._waiting and fits and self.in_use + weight <= self.capacity:
            self._take(grant)
            self._on_change(self)
            return grant
        # Ranked with those already waiting: admitted now if it comes first and fits.
        waiter = _Waiter(grant, next(self._arrivals), asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        self._wake()
        if waiter.ready.done():
            self._on_change(self)
            return grant
        if sum(not w.ready.done() for w in self._waiting) > self.max_waiting:
            self._waiting.remove(waiter)
            raise Shed(503, f"{self.name}_queue_full", f"the server is busy ({self.name}): try again shortly")
        self._on_change(self)
        try:
            async with asyncio.timeout(self.max_wait):
                await waiter.ready
        except TimeoutError:
            if self._granted(waiter):
                return grant  # room came in the very turn the time ran out: keep it
            if self._held[client] + weight > self.client_limit:
                # Only its own share held it back: the client's doing, not an overload.
                held = self._show(self._held[client])
                mine = f"this client's requests already hold {held} of {self.name}: wait for them to finish"
                raise Shed(429, f"{self.name}_client_share", mine) from None
            busy = f"the server is busy ({self.name}): try again shortly"
            raise Shed(503, f"{self.name}_wait", busy) from None
        except asyncio.CancelledError:  # the client went away while waiting
            if self._granted(waiter):
                self.release(grant)
            self._on_abandon(self)
            raise
        finally:
            if waiter in self._waiting:
                self._waiting.remove(waiter)
            self._on_change(self)
        return grant

    @staticmethod
    def _granted(waiter: _Waiter) -> bool:
        """Granted in the same loop turn as the timeout or the cancellation?"""
        return waiter.ready.done() and not waiter.ready.cancelled()

    def release(self, grant: Grant) -> None:
        if grant.released:
            return
        grant.released = True
        self.in_use -= grant.weight
        self._held[grant.client] -= grant.weight
        if self._held[grant.client] <= 0:
            del self._held[grant.client]
        self._wake()
        self._on_change(self)

    def _rank(self, waiter: _Waiter) -> tuple[int, int, int]:
        client = waiter.grant.client
        return self._held[client], self._served[client], waiter.order

    def _wake(self) -> None:
        """Grant waiters that fit, the one whose client holds least first, then the one
        served least, then the earliest; chosen again after every grant, since a grant
        changes what its client holds. A client is never granted past its share."""
        while True:
            # A waiter cancelled a moment ago (hung up, timed out) is still listed until its
            # own task runs again; its future is already done and takes no grant.
            fitting = [
                w
                for w in self._waiting
                if not w.ready.done()
                and self.in_use + w.grant.weight <= self.capacity
                and self._held[w.grant.client] + w.grant.weight <= self.client_limit
            ]
            if not fitting:
                if not self._waiting:
                    self._served.clear()
                return
            chosen = min(fitting, key=self._rank)
            self._take(chosen.grant)
            self._served[chosen.grant.client] += 1
            self._waiting.remove(chosen)
            chosen.ready.set_result(None)


class ClientLimit:
    """At most `limit` expensive requests in flight per client; 429 past it."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the per-client limit must be at least 1")
        self.limit = limit
        self._in_flight: Counter[str] = Counter()

    def enter(self, client: str) -> None:
        if self._in_flight[client] >= self.limit:
            raise Shed(
                429,
                "client_concurrency",
                f"at most {self.limit} uploads and renders at once per client: wait for one to finish",
            )
        self._in_flight[client] += 1

    def leave(self, client: str) -> None:
        self._in_flight[client] -= 1
        if self._in_flight[client] <= 0:
            del self._in_flight[client]


def mebibytes(count: int) -> str:
    return f"{count / (1 << 20):.0f} MiB"


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """`127.0.0.1/32,10.0.0.0/8` → networks; ValueError with the bad part named."""
    networks = []
    for part in text.split(","):
        if part.strip():
            try:
                networks.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError:
                raise ValueError(f"{part.strip()!r} is not an address or a network (CIDR)") from None
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    # An IPv4 peer seen through an IPv6 socket (::ffff:10.0.0.1) is that IPv4 address.
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped or address


def client_of(peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[IPNetwork]) -> str:
    """Who a request is from: the peer, unless the peer is a trusted proxy; then the nearest
    address in X-Forwarded-For that is not one (right to left, as proxies append). Anything
    malformed stops the walk: an address a client could have written is never believed past
    the last proxy we trust. An IPv6 client is its /64: one host is given a whole one."""
    current = _address(peer or "")
    if current is None:
        return peer or "unknown"
    hops = [hop for header in forwarded_for for hop in header.split(",")]
    while any(current in network for network in trusted) and hops:
        previous = _address(hops.pop())
        if previous is None:
            break
        current = previous
    if isinstance(current, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((current, 64), strict=False))
    return str(current)


# -- what the container gives us ------------------------------------------------------------


def _cgroup_paths(proc_self_cgroup: str) -> dict[str, str]:
    """Controller → path, from /proc/self/cgroup (v1 lines name controllers, v2 is `0::`)."""
    paths: dict[str, str] = {}
    for line in proc_self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else ["unified"]:
            paths[controller] = path
    return paths


def _ancestors(path: str) -> list[str]:
    """`/a/b` → [`/a/b`, `/a`, `/`]: a limit on any ancestor applies too."""
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[:i]) for i in range(len(parts), -1, -1)]


def _number(text: str | None) -> int | None:
    if text is None:
        return None
    value = text.strip()
    return int(value) if value.isascii() and value.isdigit() else None  # "max": no limit


def memory_limit(
    proc_self_cgroup: str, read: Callable[[str], str | None], *, root: str = "/sys/fs/cgroup"
) -> int | None:
    """The smallest memory limit on this process's cgroup or its ancestors (v2 `memory.max`,
    v1 `memory.limit_in_bytes`); None when there is none. Paths that are not visible (a
    container sees its own cgroup as the mount's root) are skipped."""
    paths = _cgroup_paths(proc_self_cgroup)
    limits = []
    if "unified" in paths:
        for path in _ancestors(paths["unified"]):
            limits.append(_number(read(f"{root}{path.rstrip('/')}/memory.max")))
    if "memory" in paths:
        for path in _ancestors(paths["memory"]):
            value = _number(read(f"{root}/memory{path.rstrip('/')}/memory.limit_in_bytes"))
            limits.append(
                value if value is not None and value < 1 << 60 else None
            )  # v1: "unlimited" is ~2^63
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def cpu_limit(
    proc_self_cgroup: str, read: Callable[[str], str | None], *, root: str = "/sys/fs/cgroup"
) -> float | None:
    """CPUs the cgroup's quota allows (v2 `cpu.max`, v1 `cpu.cfs_quota_us`/`cfs_period_us`)."""
    paths = _cgroup_paths(proc_self_cgroup)
    quotas = []
    if "unified" in paths:
        for path in _ancestors(paths["unified"]):
            fields = (read(f"{root}{path.rstrip('/')}/cpu.max") or "").split()
            if len(fields) == 2 and (quota := _number(fields[0])) and (period := _number(fields[1])):
                quotas.append(quota / period)
    if "cpu" in paths:  # v1 mounts it as cpu (often a link to cpu,cpuacct)
        for path in _ancestors(paths["cpu"]):
            base = f"{root}/cpu{path.rstrip('/')}"
            quota = _number(read(f"{base}/cpu.cfs_quota_us"))  # -1 (no quota) is not a number
            period = _number(read(f"{base}/cpu.cfs_period_us"))
            if quota and period:
                quotas.append(quota / period)
    return min(quotas) if quotas else None


def read_text(path: str) -> str | None:
    try:
        with open(path) as file:
            return file.read()
    except OSError:
        return None


@dataclass(frozen=True)
class Resources:
    """What this process may use, from its container's cgroup (or the machine without one)."""

    memory_limit: int
    cpus: int

    @classmethod
    def discover(cls) -> Resources:
        cgroup = read_text("/proc/self/cgroup") or ""
        machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        limit = memory_limit(cgroup, read_text)
        cores = len(os.sched_getaffinity(0))
        quota = cpu_limit(cgroup, read_text)
        cpus = min(cores, math.ceil(quota)) if quota else cores
        return cls(min(limit, machine) if limit else machine, max(1, cpus))


def work_budget(memory_limit: int, *, cache_bytes: int, resident_now: int) -> int:
    """Bytes that request bodies and decoded images may take: the limit, less a margin for
    the allocator and the runtime's own growth (15 %), the variant cache at its budget, and
    what the process already holds."""
    return int(memory_limit * 0.85) - cache_bytes - resident_now


def resident_bytes() -> int:
    """This process's resident set now (Linux)."""
    fields = (read_text("/proc/self/statm") or "0 0").split()
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


class Holding:
    """The grants one request holds, given back together when it ends; or, when a render
    thread still works for it (its client hung up mid-render), when that thread ends: the
    memory is in use until then, whoever is waiting for the answer."""

    def __init__(self) -> None:
        self._grants: list[tuple[Gate, Grant]] = []
        self._work: concurrent.futures.Future[Any] | asyncio.Future[Any] | None = None

    async def take(self, gate: Gate, weight: int, client: str) -> Grant:
        grant = await gate.acquire(weight, client)
        self._grants.append((gate, grant))
        return grant

    def busy_until(self, work: concurrent.futures.Future[Any] | asyncio.Future[Any]) -> None:
        """Keep the grants past the request's end while `work` (a render thread's job, a
        store that goes on after the client left) still uses what they count."""
        self._work = work

    def give_back(self, gate: Gate) -> None:
        """Release what is held of `gate` now (a render thread, once the render is done)."""
        for held, grant in self._grants:
            if held is gate:
                gate.release(grant)

    def __enter__(self) -> Holding:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._work is None or self._work.done():
            self._release()
            return
        loop = asyncio.get_running_loop()

        def later(_: object) -> None:
            if not loop.is_closed():  # shutting down: nothing is left to admit
                loop.call_soon_threadsafe(self._release)

        self._work.add_done_callback(later)

    def _release(self) -> None:
        for gate, grant in self._grants:
            gate.release(grant)
