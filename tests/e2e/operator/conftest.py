"""The ImageServer CRD, installed once per session into the local cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from operator_processes import OperatorProcesses

from testbed.cluster import Cluster, install_gateway_api

CRDS = Path(__file__).resolve().parents[3] / "crds"


@pytest.fixture(scope="session")
def imageserver_crd(cluster: Cluster) -> str:
    for path in sorted(CRDS.glob("*.yaml")):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=30s", "crd/imageservers.imageserver.dev"
    )
    return "imageservers.imageserver.dev"


@pytest.fixture(scope="session")
def gateway_api(cluster: Cluster) -> list[str]:
    """The Gateway API CRDs, so HTTPRoutes can be written."""
    return install_gateway_api(cluster)


@pytest.fixture
def operators(
    cluster: Cluster, imageserver_crd: str, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcesses]:
    processes = OperatorProcesses(cluster, namespace, tmp_path / "operators")
    yield processes
    processes.stop_all()
