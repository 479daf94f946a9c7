"""A real Prometheus (Debian's package) on a free loopback port, for tests and the demo.

The configuration is written as JSON, which is valid YAML, so no YAML library is needed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from testbed.processes import State, free_port, spawn, stop, wait_until

INSTALL_HINT = "run `make prometheus` (installs Debian's prometheus package) and try again"


def binary(name: str) -> str:
    """Path of `prometheus` or `promtool`, with a clear message when it is missing."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"`{name}` is not installed: {INSTALL_HINT}")
    return path


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, check=False)


class Prometheus:
    """One Prometheus server; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        scrape_configs: list[dict[str, Any]],
        rule_files: Sequence[Path] = (),
        *,
        interval: str = "1s",
        workdir: Path | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="prometheus-"))
        self.port = free_port()
        self.host = host  # another address where pods must reach it (the real nodes' host end)
        self.url = f"http://{host}:{self.port}"
        self.config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(Path(f).resolve()) for f in rule_files],
            "scrape_configs": scrape_configs,
        }
        self._state = State(self.workdir)

    def start(self) -> Prometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(json.dumps(self.config, indent=2))
        managed = spawn(
            self._state,
            "prometheus",
            [
                binary("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={self.host}:{self.port}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=1d",
            ],
        )
        wait_until("prometheus", self._ready, managed, 30)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except urllib.error.URLError:
            return False

    def stop(self) -> None:
        for managed in self._state.processes.values():
            stop(managed)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; the `result` vector of the answer."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.loads(response.read())
        if answer.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {answer}")
        return list(answer["data"]["result"])

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """Range query (Unix times); the `result` matrix of the answer."""
        params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        url = f"{self.url}/api/v1/query_range?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=30) as response:
            answer = json.loads(response.read())
        if answer.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {answer}")
        return list(answer["data"]["result"])

    def wait_for(self, promql: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll until the query returns at least one sample."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)
