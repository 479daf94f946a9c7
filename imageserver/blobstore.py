"""Content-addressed blobs on local disk, written so that an acknowledged write survives a
crash and a partial file is never visible.

A write goes to `tmp/`, is fsynced, renamed into `objects/<2 hex>/<name>` and the directory
is fsynced: after `put()` returns the blob is on disk under its final name, and before that
nothing is under that name. Names are checked against a strict pattern, so no request can
reach a path outside the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import uuid
from pathlib import Path

# An image id (SHA-256 of the original bytes), optionally followed by a variant name.
BLOB_NAME = re.compile(r"^[0-9a-f]{64}(?:\.\d{1,5}x\d{1,5}(?:-cover)?(?:\.(?:jpeg|png|webp))?)?$")


class BadBlob(ValueError):
    """A name or content the store refuses (a 4xx, not a server fault)."""


def check_name(name: str) -> str:
    if not BLOB_NAME.fullmatch(name):
        raise BadBlob(f"invalid blob name {name[:80]!r}")
    return name


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.tmp = root / "tmp"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir():  # writes cut short by a crash
            leftover.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self.count, self.bytes = self._scan()

    def _scan(self) -> tuple[int, int]:
        count = size = 0
        for path in self.objects.glob("*/*"):
            count += 1
            size += path.stat().st_size
        return count, size

    def path(self, name: str) -> Path:
        check_name(name)
        return self.objects / name[:2] / name

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def open_path(self, name: str) -> Path | None:
        """The final path of a complete blob, or None."""
        path = self.path(name)
        return path if path.is_file() else None

    def read(self, name: str) -> bytes | None:
        try:
            return self.path(name).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, name: str, data: bytes) -> bool:
        """Store durably; False when the blob was already there (writes are idempotent)."""
        final = self.path(name)
        if "." not in name and hashlib.sha256(data).hexdigest() != name:
            raise BadBlob("content does not match its SHA-256 name")
        if final.is_file():
            return False
        if not final.parent.is_dir():
            final.parent.mkdir(exist_ok=True)
            _fsync_dir(self.objects)
        temp = self.tmp / f"{name}.{uuid.uuid4().hex}"
        try:
            with open(temp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            with self._lock:  # concurrent writers of one blob: the first one counts it
                if final.is_file():
                    return False
                temp.replace(final)
                self.count += 1
                self.bytes += len(data)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        _fsync_dir(final.parent)
        return True
