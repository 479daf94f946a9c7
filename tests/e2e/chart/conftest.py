"""The chart, installed into a test's namespace with the local helm."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testbed.cluster import Cluster

CHART = Path(__file__).resolve().parents[3] / "charts" / "imageserver-operator"


@pytest.fixture
def release(cluster: Cluster, namespace: str) -> Iterator[Callable[..., str]]:
    """install(*helm_args) → the release name; uninstalled after the test (cluster-scoped
    RBAC objects carry the release name, so tests cannot collide)."""
    names: list[str] = []

    def install(*args: str) -> str:
        name = f"op-{uuid.uuid4().hex[:6]}"
        cluster.helm("install", name, str(CHART), "-n", namespace, "--wait", "--timeout=2m", *args)
        names.append(name)
        return name

    yield install
    for name in names:
        cluster.helm("uninstall", name, "-n", namespace, "--ignore-not-found")
