"""Real imageserver processes on 127.0.0.1 for tests and benchmarks: start, kill, restart, stop."""

from __future__ import annotations

import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import requests

from testbed.processes import Managed, State, free_port, spawn, stop, wait_until

ADMIN_TOKEN = "test-admin-token"
SIGNING_KEY = "test-signing-key"
STORAGE_TOKEN = "test-storage-token"
WRITER = {"Authorization": f"Bearer {STORAGE_TOKEN}"}  # what frontends send storage nodes


@dataclass
class Server:
    name: str
    url: str
    port: int
    managed: Managed
    argv: list[str]
    env: dict[str, str]

    def terminate(self, timeout: float = 60) -> None:
        """SIGTERM, as the kubelet sends it, and wait for the process to finish shutting down."""
        os.kill(self.managed.pid, signal.SIGTERM)
        if self.managed.popen is not None:
            self.managed.popen.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush — a crash."""
        os.kill(self.managed.pid, signal.SIGKILL)
        if self.managed.popen is not None:
            self.managed.popen.wait(10)


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


class Processes:
    """Starts `imageserver ROLE ARGS...` on free ports; stops every one at the end."""

    def __init__(self, directory: Path) -> None:
        self.state = State(directory)

    def start(
        self, role: str, *args: str, port: int | None = None, env: dict[str, str] | None = None
    ) -> Server:
        port = port or free_port()
        name = f"{role}-{port}"
        argv = [
            sys.executable,
            "-m",
            "imageserver",
            role,
            "--port",
            str(port),
            "--log-level",
            "warning",
            *args,
        ]
        extra = {
            # Nothing routes by readiness here unless a test says so: stop at once.
            "IMAGESERVER_DRAIN_DELAY": "0",
            "IMAGESERVER_ADMIN_TOKEN": ADMIN_TOKEN,
            "IMAGESERVER_SIGNING_KEY": SIGNING_KEY,
            "IMAGESERVER_STORAGE_TOKEN": STORAGE_TOKEN,
            **(env or {}),
        }
        server = Server(
            name, f"http://127.0.0.1:{port}", port, spawn(self.state, name, argv, extra), argv, extra
        )
        self._wait(server)
        return server

    def restart(self, server: Server) -> Server:
        server.managed = spawn(self.state, server.name, server.argv, server.env)
        self._wait(server)
        return server

    def _wait(self, server: Server) -> None:
        wait_until(f"imageserver {server.name}", lambda: _healthy(server.url), server.managed, 30)

    def stop_all(self) -> None:
        for managed in self.state.processes.values():
            stop(managed, grace=5)


def server_errors(url: str) -> float:
    """5xx answers a server counted (its series exist from the start, at 0)."""
    text = requests.get(f"{url}/metrics", timeout=5).text
    pattern = r'^imageserver_http_requests_total\{[^}]*code="5\d\d"[^}]*\} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, text, re.MULTILINE))
