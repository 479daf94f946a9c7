"""Sending a blob: from memory, or a complete file with sendfile, under our own ETag."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import hdrs, web

from imageserver.imaging import sniff
from imageserver.stores import Blob
from imageserver.variants import CONTENT_TYPES

IMMUTABLE = "public, max-age=31536000, immutable"


class _FileWithETag(web.FileResponse):
    """aiohttp's FileResponse, but the ETag is the content's, not mtime-size."""

    def __init__(self, path: Path, etag: str, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._content_etag = etag

    @property
    def etag(self) -> None:
        return None

    @etag.setter
    def etag(self, value: object) -> None:
        self._headers[hdrs.ETAG] = self._content_etag


def content_type(head: bytes) -> str:
    fmt = sniff(head)
    return CONTENT_TYPES[fmt] if fmt else "application/octet-stream"


def blob_response(blob: Blob, etag: str | None, *, cache: bool) -> web.StreamResponse:
    headers = {hdrs.CACHE_CONTROL: IMMUTABLE} if cache else {}
    if isinstance(blob, Path):
        with open(blob, "rb") as head:
            headers[hdrs.CONTENT_TYPE] = content_type(head.read(16))
        if etag is None:
            return web.FileResponse(blob, headers=headers)
        return _FileWithETag(blob, etag, headers=headers)
    headers[hdrs.CONTENT_TYPE] = content_type(blob[:16])
    if etag is not None:
        headers[hdrs.ETAG] = etag
    return web.Response(body=blob, headers=headers)
