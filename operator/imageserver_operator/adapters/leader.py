"""Leader election on a coordination.k8s.io Lease: with several operator replicas, only the
holder acts (applies, writes status, later remediates); the others keep their stores warm
and take over when the holder stops renewing.

client-go's rules, so that skewed wall clocks cannot make two leaders:

- A challenger never compares its wall clock with the holder's renewTime. It takes a lease
  held by another identity only when the lease record has not changed for the lease's
  duration, timed by its own monotonic clock from when it first saw that record.
- The leader stops acting once its last successful renewal is older than the renew deadline,
  which is shorter than the lease duration: it stops before any challenger may take over,
  even while a renewal call still hangs.

The wall clock only writes renewTime and acquireTime, for people reading the Lease.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kubernetes import client
from kubernetes.client import ApiException

log = logging.getLogger(__name__)
Clock = Callable[[], datetime.datetime]
Monotonic = Callable[[], float]


@dataclass(frozen=True)
class LeaseView:
    """One record of the lease: a live holder changes it at every renewal."""

    holder: str
    renewed: datetime.datetime | None
    duration_seconds: int
    resource_version: str = ""


@dataclass(frozen=True)
class Observation:
    record: LeaseView
    since: float  # monotonic: when this replica first saw this record


def observe(previous: Observation | None, record: LeaseView, now: float) -> Observation:
    """Pure: the same record keeps the time it was first seen; any change restarts it."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


def may_take(lease: LeaseView | None, me: str, first_observed: float, now: float) -> bool:
    """Pure: the lease is free, ours, or its record has not changed for its duration since
    `first_observed` (both monotonic, of this replica)."""
    if lease is None or not lease.holder or lease.holder == me:
        return True
    return now - first_observed >= lease.duration_seconds


class LeaderElection:
    def __init__(
        self,
        leases: client.CoordinationV1Api,
        namespace: str,
        identity: str,
        *,
        name: str = "imageserver-operator",
        duration_seconds: int = 30,
        renew_seconds: float = 10.0,
        renew_deadline_seconds: float | None = None,
        request_timeout_seconds: float | None = None,
        clock: Clock = lambda: datetime.datetime.now(datetime.UTC),
        monotonic: Monotonic = time.monotonic,
        on_elected: Iterable[Callable[[], None]] = (),
    ) -> None:
        deadline = duration_seconds * 2 / 3 if renew_deadline_seconds is None else renew_deadline_seconds
        # A round that starts on time (read, then write) ends, either way, before the deadline.
        timeout = (
            (deadline - renew_seconds) / 2 if request_timeout_seconds is None else request_timeout_seconds
        )
        if not 0 < renew_seconds < deadline < duration_seconds:
            raise ValueError(
                f"need 0 < renew ({renew_seconds}s) < renew deadline ({deadline}s)"
                f" < lease duration ({duration_seconds}s)"
            )
        if not 0 < timeout < deadline:
            raise ValueError(
                f"the request timeout ({timeout}s) must be under the renew deadline ({deadline}s)"
            )
        self.leases = leases
        self.namespace = namespace
        self.identity = identity
        self.name = name
        self.duration_seconds = duration_seconds
        self.renew_seconds = renew_seconds
        self.renew_deadline_seconds = deadline
        self.request_timeout_seconds = timeout
        self.clock = clock
        self.monotonic = monotonic
        self.on_elected: list[Callable[[], None]] = list(on_elected)
        self._observed: Observation | None = None
        self._renewed_at: float | None = None  # monotonic: when the last successful write was sent
        self.terms = 0  # times this replica became the leader
        self._released = False

    @property
    def is_leader(self) -> bool:
        """Read before every action: False once the last successful renewal is older than
        the renew deadline, whatever the renewing thread is doing."""
        renewed = self._renewed_at
        return renewed is not None and self.monotonic() - renewed < self.renew_deadline_seconds

    def _view(self, lease: client.V1Lease) -> LeaseView:
        spec = lease.spec or client.V1LeaseSpec()
        meta = lease.metadata or client.V1ObjectMeta()
        return LeaseView(
            spec.holder_identity or "",
            spec.renew_time,
            spec.lease_duration_seconds or 0,
            meta.resource_version or "",
        )

    def _renewed(self, sent: float) -> None:
        if self._released:
            return
        # Stopped acting since the last renewal (or never acted): a new term begins, and
        # everything that was skipped meanwhile must be looked at again.
        if self._renewed_at is None or self.monotonic() - self._renewed_at >= self.renew_deadline_seconds:
            self.terms += 1
        self._renewed_at = sent

    def try_acquire(self) -> bool:
        """One round: read the lease, take or renew it when allowed. Blocking."""
        if self._released:
            return False
        started = self.monotonic()
        timeout = self.request_timeout_seconds
        try:
            lease = self.leases.read_namespaced_lease(self.name, self.namespace, _request_timeout=timeout)
        except ApiException as error:
            if error.status != 404:
                raise
            lease = None
        now = self.clock()
        spec = client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=self.duration_seconds,
            renew_time=now,
            acquire_time=now,
        )
        if lease is None:
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace), spec=spec
            )
            sent = self.monotonic()
            try:
                self.leases.create_namespaced_lease(self.namespace, body, _request_timeout=timeout)
            except ApiException as conflict:
                if conflict.status == 409:  # another replica created it first
                    return False
                raise
            self._renewed(sent)
            return True
        view = self._view(lease)
        self._observed = observe(self._observed, view, self.monotonic())
        if not may_take(view, self.identity, self._observed.since, started):
            self._renewed_at = None  # another replica holds it: stop at once
            return False
        if view.holder == self.identity and lease.spec is not None and lease.spec.acquire_time:
            spec.acquire_time = lease.spec.acquire_time
        lease.spec = spec
        # Taken before the write is sent: a challenger sees the new record only later, so
        # the deadline counted from here ends before the challenger's lease duration does.
        sent = self.monotonic()
        try:
            # resourceVersion guards races
            written = self.leases.replace_namespaced_lease(
                self.name, self.namespace, lease, _request_timeout=timeout
            )
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        if written.metadata is not None and written.metadata.resource_version == view.resource_version:
            return False  # a no-op write (same renewTime): challengers saw no renewal either
        self._renewed(sent)
        return True

    def release(self) -> None:
        """Hand the lease over at once on a clean shutdown, instead of letting it expire."""
        self._released = True  # no later round takes it back, nor counts as a renewal
        if self._renewed_at is None:
            return
        self._renewed_at = None
        timeout = self.request_timeout_seconds
        # A renewal already in flight (its thread outlives the cancelled task) may land
        # between our read and our write: a 409 then means "read again", not "give up".
        for _ in range(3):
            try:
                lease = self.leases.read_namespaced_lease(self.name, self.namespace, _request_timeout=timeout)
                if lease.spec is None or lease.spec.holder_identity != self.identity:
                    return
                lease.spec.holder_identity = ""
                lease.spec.renew_time = None
                self.leases.replace_namespaced_lease(
                    self.name, self.namespace, lease, _request_timeout=timeout
                )
                return
            except ApiException as error:
                if error.status != 409:
                    log.warning("could not release the lease: %s %s", error.status, error.reason)
                    return
            except Exception as error:  # shutting down: it expires anyway
                log.warning("could not release the lease: %s", error)
                return
        log.warning("could not release the lease: it kept changing under us; it expires anyway")

    def _elected(self) -> None:
        for callback in self.on_elected:
            try:
                callback()
            except Exception:  # one failing callback must not keep the others from running
                log.exception("on_elected callback failed")

    async def run(self) -> None:
        announced = self.terms
        leading = False
        while True:
            renewed = False
            started = self.monotonic()
            try:
                renewed = await asyncio.to_thread(self.try_acquire)
            except Exception:
                log.exception("leader election round failed")
            was_leading, leading = leading, self.is_leader
            if leading and self.terms != announced:
                announced = self.terms
                log.info("became the leader", extra={"identity": self.identity})
                self._elected()
            elif was_leading and not leading:
                log.warning("lost the leadership", extra={"identity": self.identity})
            # A leader whose renewal failed tries again soon (client-go's retry period): one
            # slow answer must not cost the lease while the deadline still leaves time.
            # The period runs from the start of the round: a slow answer does not push the next
            # renewal past the deadline.
            period = self.renew_seconds if renewed or not leading else self.renew_seconds / 3
            await asyncio.sleep(max(period - (self.monotonic() - started), 0.0))
