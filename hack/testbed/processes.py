"""Background processes that outlive the command that started them, and their table.

Each process runs in its own session with its output in `<state>/logs/<name>.log`; the
table in `<state>/state.json` records pid and binary so a later command can find them,
tell a live process from a reused pid, and stop them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


class StartError(RuntimeError):
    """A component did not come up; the message carries the end of its log."""


@dataclass
class Managed:
    pid: int
    binary: str
    log: str
    # Set only in the process that started it: the one definitive liveness check.
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)


@dataclass
class State:
    directory: Path
    ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, Managed] = field(default_factory=dict)

    @property
    def file(self) -> Path:
        return self.directory / "state.json"

    def save(self) -> None:
        payload = {
            "ports": self.ports,
            "processes": {
                name: {"pid": proc.pid, "binary": proc.binary, "log": proc.log}
                for name, proc in self.processes.items()
            },
        }
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2))
        tmp.replace(self.file)

    @classmethod
    def load(cls, directory: Path) -> State | None:
        path = directory / "state.json"
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return cls(
            directory,
            ports={k: int(v) for k, v in payload.get("ports", {}).items()},
            processes={k: Managed(**v) for k, v in payload.get("processes", {}).items()},
        )


def is_running(proc: Managed) -> bool:
    """True when the process is alive; for one found in a state file, also that the pid
    still runs our binary (pids get reused)."""
    if proc.popen is not None:
        return proc.popen.poll() is None
    try:
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    except OSError:
        return False
    if cmdline.split(b"\0", 1)[0].decode(errors="replace") != proc.binary:
        return False
    try:
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie is not running


def spawn(
    state: State, name: str, argv: list[str], env: dict[str, str] | None = None, *, binary: str | None = None
) -> Managed:
    """Start a process in its own session. `binary`: the program it becomes when argv[0]
    only prepares and execs it (nsenter), which is what a later liveness check sees."""
    logs = state.directory / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=state.directory,
            env={**os.environ, **(env or {})},
        )
    managed = Managed(pid=proc.pid, binary=binary or argv[0], log=str(log), popen=proc)
    state.processes[name] = managed
    state.save()
    return managed


def log_tail(managed: Managed, lines: int = 25) -> str:
    try:
        text = Path(managed.log).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def stop(managed: Managed, grace: float = 10.0) -> None:
    if not is_running(managed):
        return
    try:
        os.killpg(managed.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not is_running(managed):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(managed.pid, signal.SIGKILL)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def claim_port(variable: str) -> int:
    """The port named by an environment variable if set (refused when taken), else a free one."""
    wanted = os.environ.get(variable)
    if not wanted:
        return free_port()
    port = int(wanted)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise StartError(
                f"port {port} (from {variable}) is already in use by another process; "
                f"free it, or unset {variable} to let the test bed pick a free port"
            ) from None
    return port


def wait_until(
    what: str,
    check: Callable[[], bool],
    managed: Managed | None,
    timeout: float,
    interval: float = 0.2,
) -> None:
    """Poll `check()` until true; fail early, with its log, if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if managed is not None and not is_running(managed):
            raise StartError(f"{what}: the process exited. Its log ends with:\n{log_tail(managed)}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(interval)
    tail = f" Its log ends with:\n{log_tail(managed)}" if managed else ""
    raise StartError(f"{what}: not ready after {timeout:.0f}s.{tail}")
