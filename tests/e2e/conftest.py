"""Fixtures of the e2e tests: the ImageServer CRDs and the Gateway API CRDs, installed once
per session into the local cluster; operator processes; and missions (an ImageServer served
for real with the operator in the loop)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.cluster import Cluster, install_gateway_api
from testbed.mission import Mission
from testbed.operators import OperatorProcesses

CRDS = Path(__file__).resolve().parents[2] / "crds"


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


@pytest.fixture
def mission(
    cluster: Cluster, imageserver_crd: str, gateway_api: list[str], namespace: str, tmp_path: Path
) -> Iterator[Callable[..., Mission]]:
    """Start a Mission (see testbed.mission) in the test's namespace; stopped afterwards."""
    started: list[Mission] = []

    def start(spec: dict[str, Any], **options: Any) -> Mission:
        one = Mission(cluster, namespace, tmp_path / f"mission-{len(started)}", spec, say=print, **options)
        started.append(one)
        return one.start()

    yield start
    for one in started:
        one.stop()
