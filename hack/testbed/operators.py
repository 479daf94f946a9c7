"""`imageserver-operator run` as real processes, for tests, benchmarks and the demo."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from testbed.cluster import Cluster
from testbed.processes import Managed, State, spawn, stop


class OperatorProcesses:
    """`imageserver-operator run` processes watching one namespace; stopped after the test."""

    def __init__(
        self, cluster: Cluster, namespace: str, directory: Path, kubeconfig: Path | None = None
    ) -> None:
        self.cluster = cluster
        self.kubeconfig = kubeconfig or cluster.kubeconfig  # e.g. a ServiceAccount's, to test RBAC
        self.namespace = namespace
        self.state = State(directory)
        self.count = 0

    def start(
        self,
        *,
        resync_seconds: float = 2.0,
        lease_seconds: int = 6,
        extra: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> Managed:
        self.count += 1
        argv = [
            sys.executable,
            "-m",
            "imageserver_operator.cli",
            "run",
            "--namespace",
            self.namespace,
            "--lease-namespace",
            self.namespace,
            "--resync-seconds",
            str(resync_seconds),
            *extra,
        ]
        environment = {
            "KUBECONFIG": str(self.kubeconfig),
            "IMAGESERVER_OPERATOR_LEASE_SECONDS": str(lease_seconds),
            "POD_NAME": f"operator-{self.count}",
            **(env or {}),
        }
        return spawn(self.state, f"operator-{self.count}", argv, environment)

    def holder(self) -> str:
        """Who holds the namespace's leader Lease now ("" when nobody does)."""
        path = f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/imageserver-operator"
        lease = self.cluster.read(path, missing_ok=True) or {}
        return str(lease.get("spec", {}).get("holderIdentity") or "")

    def wait_leading(self, name: str, timeout: float = 60.0) -> float:
        """Seconds until the process `name` (e.g. "operator-1") holds the Lease: a measurement
        of what the operator does must not count a Python process starting on a busy machine."""
        started = time.monotonic()
        while self.holder() != name:
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{name} did not take the leader Lease within {timeout:.0f}s")
            time.sleep(0.1)
        return time.monotonic() - started

    def stop_all(self) -> None:
        for managed in self.state.processes.values():
            stop(managed, grace=10)
