"""What the Gateway and the missions need of an ImageServer's running pods, whoever runs
them: the pod runner (processes for KWOK's pods) or the real nodes' kubelets (`RealPods`)."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from imageserver_operator.core.slo import job_label


class Frontend(Protocol):
    @property
    def pod(self) -> str: ...
    @property
    def datacenter(self) -> str: ...
    @property
    def url(self) -> str: ...


class Pods(Protocol):
    targets: Path  # a Prometheus file_sd list of every pod

    def start(self) -> Pods: ...
    def stop(self) -> None: ...
    def count(self) -> int: ...
    def frontends(self, datacenter: str | None = None, *, routable: bool = True) -> Sequence[Frontend]:
        """Those that take traffic (routable=False: every one running)."""
        ...

    def settled(self, pods: set[str]) -> bool: ...
    def wait_healthy(self, count: int, timeout: float = 60) -> None: ...
    def wait_for_frontends(self, count: int, timeout: float = 60) -> Sequence[Frontend]: ...
    def sicken(self, datacenter: str, error_ratio: float) -> None:
        """A datacenter's frontends fail this share of requests (0 heals it)."""
        ...


F = TypeVar("F", bound=Frontend)


def wait_for_frontends(frontends: Callable[[], Sequence[F]], count: int, timeout: float) -> list[F]:
    """Until `count` frontends take traffic: them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = list(frontends())
        if len(ready) >= count:
            return ready
        time.sleep(0.25)
    raise TimeoutError(f"only {len(frontends())} of {count} frontends take traffic")


class Poller:
    """`sync` every `interval` seconds in a thread, from start() until stop(). A failing pass
    (the API server busy) is said once per outage; the next one tries again."""

    def __init__(self, name: str, sync: Callable[[], None], interval: float) -> None:
        self.name = name
        self.sync = sync
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        def loop() -> None:
            said = ""
            while not self._stop.is_set():
                try:
                    self.sync()
                    said = ""
                except Exception as error:
                    if str(error) != said:
                        said = str(error)
                        print(f"{self.name}: {error}", file=sys.stderr)
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def write_targets(path: Path, namespace: str, targets: Sequence[tuple[str, str, str]]) -> None:
    """A Prometheus file_sd list of (address, ImageServer, pod), swapped in whole. Labelled as
    the rendered ServiceMonitor does: the SLO rules count only series of the ImageServer's own
    job, and a target's `job` label overrides the scrape config's job_name."""
    groups = [
        {
            "targets": [address],
            "labels": {
                "namespace": namespace,
                "imageserver": imageserver,
                "job": job_label(namespace, imageserver),
                "pod": pod,
            },
        }
        for address, imageserver, pod in targets
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups))
    tmp.replace(path)
