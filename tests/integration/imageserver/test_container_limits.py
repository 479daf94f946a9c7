"""Admission is sized by the container, not by the node: a real server started inside a
memory and CPU cgroup takes its memory budget and render threads from their limits."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from clusters import metric
from servers import Server

from testbed.processes import State, free_port, spawn, stop, wait_until

V1 = Path("/sys/fs/cgroup")
LIMIT = 600 << 20
CACHE = 64 << 20


@pytest.fixture
def cgroups() -> Iterator[tuple[Path, Path]]:
    """A child memory cgroup limited to 600 MiB and a cpu cgroup with a quota of one CPU."""
    memory, cpu = V1 / "memory", V1 / "cpu"
    if (
        os.geteuid() != 0
        or not (memory / "memory.limit_in_bytes").exists()
        or not (cpu / "cpu.cfs_quota_us").exists()
    ):
        pytest.skip(
            "needs root and cgroup v1 memory and cpu controllers (this test bed's machines have them)"
        )
    name = f"imageserver-test-{uuid.uuid4().hex[:8]}"
    made = [memory / name, cpu / name]
    for directory in made:
        directory.mkdir()
    (memory / name / "memory.limit_in_bytes").write_text(str(LIMIT))
    (cpu / name / "cpu.cfs_period_us").write_text("100000")
    (cpu / name / "cpu.cfs_quota_us").write_text("100000")
    yield memory / name, cpu / name
    for directory in made:
        for pid in (directory / "cgroup.procs").read_text().split():  # left over by a failed test
            (directory.parent / "cgroup.procs").write_text(pid)
        directory.rmdir()


def test_the_memory_budget_and_render_threads_come_from_the_cgroup(
    cgroups: tuple[Path, Path], tmp_path: Path
) -> None:
    memory, cpu = cgroups
    port = free_port()
    state = State(tmp_path / "state")
    # Join both cgroups, then become the server: the limits apply to it from its first byte.
    argv = [
        "/bin/sh",
        "-c",
        f'echo $$ > {memory}/cgroup.procs && echo $$ > {cpu}/cgroup.procs && exec "$@"',
        "sh",
        sys.executable,
        "-m",
        "imageserver",
        "serve",
        "--data",
        str(tmp_path / "data"),
        "--port",
        str(port),
        "--cache-bytes",
        str(CACHE),
        "--drain-delay",
        "0",
    ]
    managed = spawn(state, "limited", argv)
    server = Server("limited", f"http://127.0.0.1:{port}", port, managed, argv, {})
    try:
        wait_until("imageserver in a cgroup", lambda: _healthy(server.url), managed, 30)
        assert str(managed.pid) in (memory / "cgroup.procs").read_text().split()
        assert metric(server, 'imageserver_admission_capacity{gate="render"}') == 2  # 1 thread, 2 slots
        budget = metric(server, 'imageserver_admission_capacity{gate="memory"}')
        # 85 % of the limit, less the cache and what the process held at start (tens of MiB).
        ceiling = LIMIT * 0.85 - CACHE
        assert ceiling - (200 << 20) < budget < ceiling, f"budget {budget / (1 << 20):.0f} MiB"
    finally:
        stop(managed, grace=5)


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False
