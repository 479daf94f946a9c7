"""The ImageServer CRD, installed once per session into the local cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

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
