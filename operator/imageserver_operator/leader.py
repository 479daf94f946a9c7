"""Leader election on a coordination.k8s.io Lease: with several operator replicas, only the
holder acts (applies, writes status, later remediates); the others keep their stores warm
and take over when the holder stops renewing.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes import client
from kubernetes.client import ApiException

log = logging.getLogger(__name__)
Clock = Callable[[], datetime.datetime]


@dataclass(frozen=True)
class LeaseView:
    holder: str
    renewed: datetime.datetime | None
    duration_seconds: int


def may_take(lease: LeaseView | None, me: str, now: datetime.datetime) -> bool:
    """Pure: the lease is free, ours, or expired."""
    if lease is None or not lease.holder or lease.holder == me or lease.renewed is None:
        return True
    return now - lease.renewed > datetime.timedelta(seconds=lease.duration_seconds)


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
        clock: Clock = lambda: datetime.datetime.now(datetime.UTC),
        on_elected: Callable[[], None] = lambda: None,
    ) -> None:
        self.leases = leases
        self.namespace = namespace
        self.identity = identity
        self.name = name
        self.duration_seconds = duration_seconds
        self.renew_seconds = renew_seconds
        self.clock = clock
        self.on_elected = on_elected
        self.is_leader = False

    def _view(self, lease: client.V1Lease) -> LeaseView:
        spec = lease.spec or client.V1LeaseSpec()
        return LeaseView(spec.holder_identity or "", spec.renew_time, spec.lease_duration_seconds or 0)

    def try_acquire(self) -> bool:
        """One round: read the lease, take or renew it when allowed. Blocking."""
        now = self.clock()
        spec = client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=self.duration_seconds,
            renew_time=now,
            acquire_time=now,
        )
        try:
            lease = self.leases.read_namespaced_lease(self.name, self.namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace), spec=spec
            )
            try:
                self.leases.create_namespaced_lease(self.namespace, body)
                return True
            except ApiException as conflict:
                if conflict.status == 409:  # another replica created it first
                    return False
                raise
        view = self._view(lease)
        if not may_take(view, self.identity, now):
            return False
        if view.holder == self.identity and lease.spec is not None and lease.spec.acquire_time:
            spec.acquire_time = lease.spec.acquire_time
        lease.spec = spec
        try:
            self.leases.replace_namespaced_lease(
                self.name, self.namespace, lease
            )  # resourceVersion guards races
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    def release(self) -> None:
        """Hand the lease over at once on a clean shutdown, instead of letting it expire."""
        if not self.is_leader:
            return
        self.is_leader = False
        try:
            lease = self.leases.read_namespaced_lease(self.name, self.namespace)
            if lease.spec is not None and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = ""
                lease.spec.renew_time = None
                self.leases.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as error:
            log.warning("could not release the lease: %s", error.reason)

    async def run(self) -> None:
        while True:
            try:
                leading = await asyncio.to_thread(self.try_acquire)
            except Exception:
                log.exception("leader election round failed")
                leading = False
            if leading and not self.is_leader:
                log.info("became the leader", extra={"identity": self.identity})
                self.is_leader = True
                self.on_elected()
            elif not leading and self.is_leader:
                log.warning("lost the leadership", extra={"identity": self.identity})
                self.is_leader = False
            await asyncio.sleep(self.renew_seconds)
