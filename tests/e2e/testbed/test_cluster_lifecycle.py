"""`make cluster-up` recovers from what a killed run leaves behind and explains what it
cannot fix. These tests run their own cluster in a private state directory."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from testbed import cluster
from testbed.processes import StartError, State, is_running


def test_a_taken_apiserver_port_is_refused_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "cluster"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        monkeypatch.setenv("IMAGESERVER_SRE_APISERVER_PORT", str(port))
        refused = rf"port {port} \(from IMAGESERVER_SRE_APISERVER_PORT\) is already in use"
        with pytest.raises(StartError, match=refused):
            cluster.up(directory)
    state = State.load(directory)
    assert state is None or not state.processes


def test_a_stale_cluster_from_a_killed_run_is_cleaned_up_and_replaced(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "cluster"
    cluster.up(directory)
    old = State.load(directory)
    assert old is not None
    # A run killed halfway: the API server is gone, the other components still run.
    os.killpg(old.processes["kube-apiserver"].pid, signal.SIGKILL)
    try:
        fresh = cluster.up(directory)
        assert "found a stale cluster from an earlier run (still running: etcd" in capfd.readouterr().err
        assert not any(is_running(p) for p in old.processes.values())
        assert cluster.running(directory) is not None
        assert "kwok-dc-c-0" in fresh.kubectl("get", "nodes", "-o", "name")
    finally:
        cluster.down(directory, quiet=True)
    new = State.load(directory)
    assert new is None and not directory.exists()
