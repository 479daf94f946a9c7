"""pytest fixtures for the test bed: the cluster, a namespace per test, Prometheus.

Loaded by `tests/conftest.py` (`pytest_plugins`). Tests under `tests/e2e/` get the `e2e`
marker and those under `tests/integration/` the `integration` marker from their folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from testbed import cluster as local_cluster
from testbed.cluster import Cluster
from testbed.prometheus import Prometheus

# Real nodes cost a cold build (containerd, kubelet, CoreDNS, the images) that the default
# run's time budget lacks for now: they run when asked for (`REAL_NODES=1 make test`).
REAL_NODES = (os.environ.get("REAL_NODES") or os.environ.get("IMAGESERVER_SRE_REAL_NODES")) == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for marker in ("e2e", "integration"):
            if marker in parts:
                item.add_marker(getattr(pytest.mark, marker))
        if "real_nodes" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_nodes)
            if not REAL_NODES:
                item.add_marker(
                    pytest.mark.skip(reason="real nodes are off: `REAL_NODES=1 make test` runs them")
                )
    # A test that restarts the control plane, or times the operator tightly, must have the
    # cluster to itself: never beside another xdist worker's tests (`make pytest` runs them
    # in a step of their own).
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    alone = {
        "disruptive": "restarts the control plane: run it alone, without -n",
        "timed": "a tight time bound a neighbour's load would break: run it alone, without -n",
    }
    for item in items:
        for marker, reason in alone.items():
            if workers > 1 and item.get_closest_marker(marker) is not None:
                item.add_marker(pytest.mark.skip(reason=reason))
    # Last: the clients of a restarted control plane (controllers, KWOK) may take minutes to
    # notice a stalled watch, and no other test should wait for them.
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The local cluster: the running one when there is one (left running), else a new one,
    stopped when the whole run ends (after every xdist worker: see pytest_sessionfinish)."""
    with _session_lock():
        running = local_cluster.running()
        if running is None:
            running = local_cluster.up()
            (_session_dir() / STARTED).write_text(str(running.state))
    yield running


@pytest.fixture(scope="session")
def real_nodes(cluster: Cluster) -> list[str]:
    """A real node per datacenter (kubelet, containerd, runc) in the cluster: added if it has
    none; they go with the cluster (see `cluster`)."""
    with _session_lock():
        return local_cluster.add_real_nodes(cluster)


# One run of pytest may be several processes (pytest-xdist's workers): they share one cluster,
# which the first to need it starts under a lock, and the run's main process stops it at the
# very end if the run started it. The main process names the shared directory before any
# worker exists; the workers inherit it through the environment.
SESSION = "IMAGESERVER_SRE_TEST_SESSION"
STARTED = "cluster-started"


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _session_dir() -> Path:
    return Path(os.environ[SESSION])


@contextlib.contextmanager
def _session_lock() -> Iterator[None]:
    with (_session_dir() / "lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def pytest_configure(config: pytest.Config) -> None:
    if not _is_worker(config):
        os.environ[SESSION] = tempfile.mkdtemp(prefix="imageserver-sre-session-")


@pytest.hookimpl(trylast=True)  # after the runner's teardown of what still uses the cluster
def pytest_sessionfinish(session: pytest.Session) -> None:
    if _is_worker(session.config) or SESSION not in os.environ:
        return
    shared = Path(os.environ.pop(SESSION))
    started = shared / STARTED
    if started.exists():
        local_cluster.down(Path(started.read_text()), quiet=True)
    shutil.rmtree(shared, ignore_errors=True)


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting)."""
    base = request.node.name.lower().replace("_", "-")
    name = f"t-{''.join(c for c in base if c.isalnum() or c == '-')[:40].strip('-')}-{uuid.uuid4().hex[:5]}"
    manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    cluster.kubectl("create", "-f", "-", input=json.dumps(manifest))
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    """Start Prometheus with given scrape configs and rule files; stopped after the test."""
    started: list[Prometheus] = []

    def start(
        scrape_configs: list[dict[str, Any]], rule_files: Sequence[Path] = (), interval: str = "1s"
    ) -> Prometheus:
        server = Prometheus(
            scrape_configs, rule_files, interval=interval, workdir=tmp_path / f"prometheus-{len(started)}"
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
