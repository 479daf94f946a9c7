"""`imageserver-operator run` as real processes, for tests and benchmarks."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from testbed.cluster import Cluster
from testbed.processes import Managed, State, spawn, stop


class OperatorProcesses:
    """`imageserver-operator run` processes watching one namespace; stopped after the test."""

    def __init__(self, cluster: Cluster, namespace: str, directory: Path) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.state = State(directory)
        self.count = 0

    def start(
        self, *, resync_seconds: float = 2.0, lease_seconds: int = 6, extra: Sequence[str] = ()
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
        env = {
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "IMAGESERVER_OPERATOR_LEASE_SECONDS": str(lease_seconds),
            "POD_NAME": f"operator-{self.count}",
        }
        return spawn(self.state, f"operator-{self.count}", argv, env)

    def stop_all(self) -> None:
        for managed in self.state.processes.values():
            stop(managed, grace=10)
