"""Content-addressed blobs on local disk, written so that an acknowledged write survives a
crash and a partial file is never visible.

A write goes to `tmp/`, is fsynced, renamed into `objects/<2 hex>/<name>` and the directory
is fsynced: after `put()` returns the blob is on disk under its final name, and before that
nothing is under that name. Names are checked against a strict pattern, so no request can
reach a path outside the store.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from imageserver import sealed

log = logging.getLogger(__name__)

# An image id (SHA-256 of the original bytes), optionally followed by a variant name and the
# renderer that made it. Variants stored by releases before renderer tags have no tag: they
# are kept, served to whoever asks by that name, and moved like the rest, but never sealed.
BLOB_NAME = re.compile(
    r"^[0-9a-f]{64}(?:\.\d{1,5}x\d{1,5}(?:-cover)?(?:\.(?:jpeg|png|webp|avif|gif))?(?:\.r[0-9a-f]{8})?)?$"
)
SEALED_NAME = re.compile(r"\.r[0-9a-f]{8}$")


class BadBlob(ValueError):
    """A name or content the store refuses (a 4xx, not a server fault)."""


class Full(Exception):
    """The disk cannot take the blob (507): the node keeps its reserve, or the write hit ENOSPC."""


DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def check_name(name: str) -> str:
    if not BLOB_NAME.fullmatch(name):
        raise BadBlob(f"invalid blob name {name[:80]!r}")
    return name


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_variant(name: str) -> bool:
    return "." in name


def is_sealed(name: str) -> bool:
    """A variant named with its renderer, which is stored sealed (`sealed`)."""
    return SEALED_NAME.search(name) is not None


class BlobStore:
    def __init__(
        self, root: Path, *, reserve: int = 0, on_corrupt: Callable[[str], None] = lambda _: None
    ) -> None:
        self.root = root
        self.reserve = reserve  # bytes kept free: the hints and writes in flight need room
        self.on_corrupt = on_corrupt
        self.corrupt = root / "corrupt"
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

    def disk(self) -> tuple[int, int]:
        """Bytes free (for this user) and the filesystem's size."""
        stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize

    def readiness(self, largest: int = 0) -> str | None:
        """Ready while any write up to `largest` bytes fits above the reserve."""
        free, _ = self.disk()
        if free - largest < self.reserve:
            return f"disk full: {free} bytes free, {self.reserve} kept in reserve, writes of up to {largest}"
        return None

    def path(self, name: str) -> Path:
        check_name(name)
        return self.objects / name[:2] / name

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def open_path(self, name: str) -> Path | None:
        """The final path of a complete blob, or None."""
        path = self.path(name)
        return path if path.is_file() else None

    def names_of(self, image_id: str) -> list[str]:
        """The blobs of one image held here: variants first, the original last."""
        check_name(image_id)
        names = [path.name for path in (self.objects / image_id[:2]).glob(f"{image_id}*")]
        names = [name for name in names if BLOB_NAME.fullmatch(name)]  # nothing else is ours
        return sorted(names, key=lambda name: (name == image_id, name))

    def image_ids(self) -> list[str]:
        """The originals held here."""
        return [path.name for path in self.objects.glob("*/*") if "." not in path.name]

    def remove_image(self, image_id: str) -> None:
        """Remove an image held elsewhere now: the original first (so whatever is left here is
        still a whole image or none), then its variants."""
        for name in reversed(self.names_of(image_id)):
            path = self.path(name)
            with self._lock:
                try:
                    size = path.stat().st_size
                    path.unlink()
                except FileNotFoundError:
                    continue
                self.count -= 1
                self.bytes -= size
        with contextlib.suppress(FileNotFoundError):
            fsync_dir(self.objects / image_id[:2])

    def read(self, name: str) -> bytes | None:
        try:
            return self.path(name).read_bytes()
        except FileNotFoundError:
            return None

    def read_variant(self, name: str) -> bytes | None:
        """A variant, sealed, once its seal is checked; a damaged one is moved aside to
        `corrupt/` (kept for a person) and is a miss, which the frontend re-renders."""
        data = self.read(name)
        if data is None or not is_sealed(name) or sealed.unseal(name, data) is not None:
            return data
        self._set_aside(name, len(data))
        return None

    def _set_aside(self, name: str, size: int) -> None:
        self.corrupt.mkdir(exist_ok=True)
        with self._lock:
            try:
                self.path(name).replace(self.corrupt / f"{name}.{uuid.uuid4().hex}")
            except FileNotFoundError:
                return
            self.count -= 1
            self.bytes -= size
        log.error("a damaged variant was set aside", extra={"blob": name})
        self.on_corrupt(name)

    def put(self, name: str, data: bytes) -> bool:
        """Store durably; False when the blob was already there (writes are idempotent)."""
        final = self.path(name)
        if not is_variant(name) and hashlib.sha256(data).hexdigest() != name:
            raise BadBlob("content does not match its SHA-256 name")
        if is_sealed(name) and sealed.unseal(name, data) is None:
            raise BadBlob("a variant must come sealed to its name")
        if final.is_file() and (not is_variant(name) or self.read_variant(name) is not None):
            return False
        free, _ = self.disk()
        if free - len(data) < self.reserve:
            raise Full(f"{free} bytes free, {self.reserve} kept in reserve: no room for {len(data)}")
        try:
            return self._write(final, name, data)
        except OSError as why:
            if why.errno in DISK_FULL:
                raise Full(f"the disk is full ({why.strerror})") from None
            raise

    def _write(self, final: Path, name: str, data: bytes) -> bool:
        if not final.parent.is_dir():
            final.parent.mkdir(exist_ok=True)
            fsync_dir(self.objects)
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
        fsync_dir(final.parent)
        return True
