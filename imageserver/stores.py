"""Where a frontend keeps and finds blobs: the local disk (the embedded `serve` role) or the
storage nodes of the topology (`replication.ReplicatedStore`). Both speak `ImageStore`."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from imageserver.blobstore import BlobStore, Full, is_variant

# A blob as the frontend gets it: bytes in memory, or a complete file to send as it is.
Blob = bytes | Path


class Unavailable(Exception):
    """No replica could take or give the blob right now: 503 with Retry-After."""


class ImageStore(Protocol):
    async def put(self, image_id: str, blobs: Mapping[str, bytes]) -> None:
        """Store every blob of one image; returns once they are durable (the write quorum)."""

    async def get(self, image_id: str, name: str) -> Blob | None:
        """The blob as stored (a variant sealed, see `sealed`), None when it does not exist;
        `Unavailable` when that cannot be known."""

    def readiness(self) -> str | None:
        """None when ready to serve, else why not."""


class LocalStore:
    """Blobs on this machine's disk: frontend and storage in one process."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs

    async def put(self, image_id: str, blobs: Mapping[str, bytes]) -> None:
        # The original last: once it is visible, its variants are too.
        try:
            for name in sorted(blobs, key=lambda n: n == image_id):
                await asyncio.to_thread(self.blobs.put, name, blobs[name])
        except Full as why:
            raise Unavailable(str(why)) from None

    async def get(self, image_id: str, name: str) -> Blob | None:
        if is_variant(name):
            return await asyncio.to_thread(self.blobs.read_variant, name)
        return self.blobs.open_path(name)

    def readiness(self) -> str | None:
        return self.blobs.readiness()
