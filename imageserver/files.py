"""Sending a blob: from memory, or a stored file with sendfile, under our own ETag, whole or
as the one byte range asked for (206).

Stored files never change (an original is named by its content's hash), so they are kept
open (`OpenFiles`, as nginx's open_file_cache): a GET opens nothing and makes no thread-pool
hop, where aiohttp's FileResponse makes two (open and stat, then close) and held originals at
0.41x nginx. A stat per request notices a file removed (its image moved to another shard) or
replaced, and that request opens the one there now. The stat and a first open run on the
event loop, as nginx's do: local metadata, cheaper than the hop to a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from imageserver.imaging import SNIFF_BYTES, sniff
from imageserver.stores import Blob
from imageserver.variants import CONTENT_TYPES
from imageserver.web import error

IMMUTABLE = "public, max-age=31536000, immutable"
OPEN_FILES = 256  # descriptors kept open per process; the least recently sent is closed first
SEND_STEP = 1 << 20  # bytes per write where sendfile cannot be used (TLS)
_RANGE = re.compile(r"bytes=([0-9]{0,18})-([0-9]{0,18})", re.ASCII | re.IGNORECASE)  # units: any case


class Unsatisfiable(Exception):
    """A Range wholly past the end: 416, with the size in Content-Range."""


def content_type(head: bytes) -> str:
    fmt = sniff(head)  # an original or a variant, from its first SNIFF_BYTES
    return CONTENT_TYPES[fmt] if fmt else "application/octet-stream"


def requested_span(
    range_header: str | None, if_range: str | None, etag: str | None, size: int
) -> tuple[int, int] | None:
    """The byte range a GET asks for, as (first byte, count); None for the whole blob (no
    Range, or one this server ignores, as RFC 9110 lets it: several ranges, another unit, bad
    syntax, or an If-Range that is not this blob's ETag). `Unsatisfiable` when it starts past
    the end."""
    if not range_header:
        return None
    if if_range is not None and (etag is None or if_range.strip() != etag):
        return None  # another version was cached, or a date: the whole blob, 200
    found = _RANGE.fullmatch(range_header.strip().replace(" ", ""))
    if found is None:
        return None
    first, last = found.groups()
    if not first:  # the last N bytes
        if not last:
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - suffix), min(suffix, size)
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise Unsatisfiable
    end = min(int(last), size - 1) if last else size - 1
    return start, end - start + 1


@dataclass(eq=False)
class OpenFile:
    file: BinaryIO  # sendfile takes explicit offsets: requests share it safely
    size: int
    content_type: str
    identity: tuple[int, int]  # (st_dev, st_ino): the very file opened
    users: int = 0
    retired: bool = False  # closed once its last sender is done


class OpenFiles:
    """Stored files kept open for sending, the least recently sent closed first."""

    def __init__(self, capacity: int = OPEN_FILES) -> None:
        self.capacity = capacity
        self._open: OrderedDict[Path, OpenFile] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def acquire(self, path: Path) -> OpenFile | None:
        """The file at `path`, open and held until `release`; None when there is none now."""
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            self._retire(path)
            return None
        held = self._open.get(path)
        if held is not None and held.identity == (stat.st_dev, stat.st_ino):
            self._open.move_to_end(path)
        else:
            self._retire(path)
            try:
                file = open(path, "rb", buffering=0)  # noqa: SIM115  # kept open past this call
            except FileNotFoundError:
                return None
            try:
                opened = os.fstat(file.fileno())
                head = os.pread(file.fileno(), SNIFF_BYTES, 0)
            except OSError:  # a failing disk: the error is the request's, not a leaked descriptor
                file.close()
                raise
            held = OpenFile(file, opened.st_size, content_type(head), (opened.st_dev, opened.st_ino))
            self._open[path] = held
            while len(self._open) > self.capacity:
                self._retire(next(iter(self._open)))
        held.users += 1
        return held

    def release(self, held: OpenFile) -> None:
        held.users -= 1
        if held.retired and not held.users:
            held.file.close()

    def _retire(self, path: Path) -> None:
        held = self._open.pop(path, None)
        if held is not None:
            held.retired = True
            if not held.users:
                held.file.close()

    def close(self) -> None:
        for path in list(self._open):
            self._retire(path)


class SentFile(web.StreamResponse):
    """A stored file, whole or one range of it, sent with sendfile from an open descriptor."""

    def __init__(self, files: OpenFiles, path: Path, etag: str | None, headers: dict[str, str]) -> None:
        super().__init__(headers=headers)
        self._files, self._path, self._etag = files, path, etag

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:  # sent already: never a second copy of the file
            return await super().prepare(request)
        held = self._files.acquire(self._path)
        if held is None:  # removed since it was found: gone from this replica
            return await _replace_with(self, request, error(404, "no such blob"))
        try:
            self.content_type = held.content_type
            try:
                span = _span(request, self._etag, held.size)
            except Unsatisfiable:
                return await _replace_with(self, request, _unsatisfiable(held.size))
            start, count = span or (0, held.size)
            if span is not None:
                self.set_status(206)
                self.headers[hdrs.CONTENT_RANGE] = f"bytes {start}-{start + count - 1}/{held.size}"
            self.content_length = count
            body = request.method != hdrs.METH_HEAD and count > 0
            with _corked(request.transport if body else None):
                writer = await super().prepare(request)
                sent = _send_now(request.transport, held, start, count) if body else 0
            # Uncorked by now: a rest that waits on the client must not wait on the cork too.
            if writer is not None and body and sent < count:
                await _send_rest(request, writer, held, start + sent, count - sent)
            await super().write_eof()
            return writer
        finally:
            self._files.release(held)


@contextlib.contextmanager
def _corked(transport: asyncio.BaseTransport | None) -> Iterator[None]:
    """TCP_CORK while the headers and the file go out (nginx's tcp_nopush): the headers leave
    in the file's first segment instead of a packet of their own, which the client would wake
    up for too."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        yield
        return
    with contextlib.suppress(OSError):  # a client already gone: the send says so
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)


def _span(request: web.BaseRequest, etag: str | None, size: int) -> tuple[int, int] | None:
    if request.method != hdrs.METH_GET:
        return None  # RFC 9110 14.2: Range is defined for GET only; a HEAD gets the whole's headers
    return requested_span(request.headers.get(hdrs.RANGE), request.headers.get(hdrs.IF_RANGE), etag, size)


def _send_now(transport: asyncio.BaseTransport | None, held: OpenFile, start: int, count: int) -> int:
    """sendfile(2) straight onto the socket, when nothing waits to be written before it: one
    call sends a whole original to a client that keeps up, without asyncio's round of futures
    and watcher changes (400 -> 260 us of user CPU per original). The bytes it took."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if (
        sock is None
        or not isinstance(transport, asyncio.WriteTransport)
        or transport.get_extra_info("sslcontext") is not None  # TLS: the bytes must be encrypted
        or transport.get_write_buffer_size()
    ):
        return 0
    try:
        return os.sendfile(sock.fileno(), held.file.fileno(), start, count)
    except BlockingIOError:
        return 0


async def _send_rest(
    request: web.BaseRequest, writer: AbstractStreamWriter, held: OpenFile, start: int, count: int
) -> None:
    """What the socket did not take at once, as the client reads (asyncio's sendfile)."""
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("connection lost")
    try:
        await asyncio.get_running_loop().sendfile(transport, held.file, start, count, fallback=False)
    except (NotImplementedError, asyncio.SendfileNotAvailableError, RuntimeError):  # TLS: through memory
        for offset in range(start, start + count, SEND_STEP):
            await writer.write(os.pread(held.file.fileno(), min(SEND_STEP, start + count - offset), offset))


async def _replace_with(
    response: web.StreamResponse, request: web.BaseRequest, answer: web.Response
) -> AbstractStreamWriter | None:
    """Answer with `answer`'s status, headers and body instead (decided while preparing)."""
    response.set_status(answer.status)
    for name in (hdrs.CACHE_CONTROL, hdrs.ETAG, hdrs.ACCEPT_RANGES):
        response.headers.pop(name, None)
    response.headers.update(answer.headers)
    body = answer.body if isinstance(answer.body, bytes) else b""
    response.content_length = len(body)
    writer = await web.StreamResponse.prepare(response, request)  # not the subclass's own
    if request.method != hdrs.METH_HEAD:
        await response.write(body)
    await response.write_eof()
    return writer


def _unsatisfiable(size: int) -> web.Response:
    return error(416, f"the range is past the end ({size} bytes)", {hdrs.CONTENT_RANGE: f"bytes */{size}"})


def blob_response(
    request: web.BaseRequest, files: OpenFiles, blob: Blob, etag: str | None, *, cache: bool
) -> web.StreamResponse:
    headers: dict[str, str] = {hdrs.ACCEPT_RANGES: "bytes"}
    if cache:
        headers[hdrs.CACHE_CONTROL] = IMMUTABLE
    if etag is not None:
        headers[hdrs.ETAG] = etag
    if isinstance(blob, Path):
        return SentFile(files, blob, etag, headers)
    headers[hdrs.CONTENT_TYPE] = content_type(blob[:SNIFF_BYTES])
    try:
        span = _span(request, etag, len(blob))
    except Unsatisfiable:
        return _unsatisfiable(len(blob))
    if span is None:
        return web.Response(body=blob, headers=headers)
    start, count = span
    headers[hdrs.CONTENT_RANGE] = f"bytes {start}-{start + count - 1}/{len(blob)}"
    return web.Response(body=blob[start : start + count], status=206, headers=headers)
