"""Hostile clients and a well-behaved one, for the overload tests and the bench: stalled
uploads, decompression bombs, clients that hang up, and a client that measures what it gets.

Every attacker speaks raw HTTP on a socket to 127.0.0.1, and names itself in
X-Forwarded-For (documentation addresses, RFC 5737), which the server believes because the
tests start it with 127.0.0.1 as a trusted proxy: one machine plays many clients.
"""

from __future__ import annotations

import functools
import io
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests
import samples
from PIL import Image

STATUS = re.compile(rb"^HTTP/1\.[01] (\d{3}) ")
ATTACKER = "198.51.100.66"
GOOD = "203.0.113.10"
BUDGET = 512 << 20  # the memory limit of the server under attack


def guarded(data: Path, *, body_idle: float) -> list[str]:
    """`imageserver serve` arguments of the server under attack: a 512 MB limit, a small
    cache, 2 render threads, and 127.0.0.1 trusted to name the clients."""
    return [
        "serve",
        "--data",
        str(data),
        "--memory-limit",
        str(BUDGET),
        "--cache-bytes",
        str(16 << 20),
        "--render-threads",
        "2",
        "--trusted-proxies",
        "127.0.0.1",
        "--body-idle-timeout",
        str(body_idle),
    ]


@functools.cache
def bomb(width: int = 7000, height: int = 7000, mode: str = "RGBA") -> bytes:
    """A PNG of zeros: a few hundred KB on the wire, hundreds of MB once decoded."""
    out = io.BytesIO()
    Image.new(mode, (width, height)).save(out, "PNG")
    return out.getvalue()


def _head(method: str, path: str, identity: str, length: int) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: attack\r\nX-Forwarded-For: {identity}\r\n"
        f"Content-Type: image/png\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()


def read_status(connection: socket.socket) -> tuple[int | None, bytes]:
    """The answer's status and head, or None when the server closed without one."""
    head = b""
    while b"\r\n\r\n" not in head:
        try:
            chunk = connection.recv(65536)
        except (TimeoutError, OSError):
            break
        if not chunk:
            break
        head += chunk
    match = STATUS.match(head)
    return (int(match.group(1)) if match else None), head


class StalledUpload:
    """Declares `size` bytes, sends all but `missing` of them, and then sends nothing."""

    def __init__(self, port: int, identity: str, size: int = 20 << 20, missing: int = 1) -> None:
        self.connection = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.connection.sendall(_head("POST", "/v1/images", identity, size))
        self.sent = 0
        chunk = b"\0" * 65536
        self.connection.settimeout(0.2)
        try:
            while self.sent < size - missing:
                self.sent += self.connection.send(chunk[: size - missing - self.sent])
        except (TimeoutError, OSError):
            pass  # refused early (429/503), or the server stopped reading: it holds what it has

    def answer(self, wait: float) -> int | None:
        self.connection.settimeout(wait)
        return read_status(self.connection)[0]

    def close(self) -> None:
        self.connection.close()


@dataclass
class Answer:
    status: int | None
    retry_after: bool
    seconds: float


def post(port: int, body: bytes, identity: str, *, hang_up_after: float | None = None) -> Answer:
    """POST an image; with `hang_up_after`, close the connection if no answer came by then."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        connection.sendall(_head("POST", "/v1/images", identity, len(body)) + body)
        if hang_up_after is not None:
            connection.settimeout(hang_up_after)
        status, head = read_status(connection)
    return Answer(status, b"\r\nretry-after:" in head.lower(), time.monotonic() - started)


@dataclass
class WellBehaved:
    """Uploads small images one after another and reads their 300x300 variant back."""

    url: str
    identity: str = GOOD
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        headers = {"X-Forwarded-For": self.identity}
        seed = 0
        while not self.stop.is_set():
            seed += 1
            image = samples.jpeg(320, 240, seed=seed, quality=80)
            started = time.monotonic()
            answer = requests.post(f"{self.url}/v1/images", data=image, headers=headers, timeout=30)
            self.latencies.append(time.monotonic() - started)
            self.statuses[answer.status_code] += 1
            if answer.status_code != 201:
                continue
            started = time.monotonic()
            read = requests.get(
                f"{self.url}/v1/images/{answer.json()['id']}?w=300&h=300", headers=headers, timeout=30
            )
            self.latencies.append(time.monotonic() - started)
            self.statuses[read.status_code] += 1

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0


class PeakRss:
    """Samples a process's resident set every 10 ms and keeps the highest."""

    def __init__(self, pid: int) -> None:
        self.status = Path(f"/proc/{pid}/status")
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            try:
                for line in self.status.read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
            except OSError:
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak
