"""What a GET asks for: the original, an allowlisted variant, or a signed on-demand one.

Everything here is a pure function of the request, so the ETag is known before any image is
read, and a signature can be checked before any work is done.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal, cast

Fit = Literal["contain", "cover"]
Format = Literal["jpeg", "png", "webp"]
FORMATS: tuple[Format, ...] = ("jpeg", "png", "webp")
CONTENT_TYPES: dict[str, str] = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")
VARIANT_PARAMS = frozenset({"w", "h", "fit", "format", "sig"})


class BadVariant(ValueError):
    """The query does not describe a variant we can make; 400 with this message."""


@dataclass(frozen=True, order=True)
class Size:
    width: int
    height: int

    @classmethod
    def parse(cls, text: str) -> Size:
        match = re.fullmatch(r"(\d{1,5})x(\d{1,5})", text.strip())
        if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
            raise ValueError(f"{text!r} is not a size like 300x300")
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class Variant:
    """A rendition of an image: fit in (or cover) width x height, optionally re-encoded."""

    size: Size
    fit: Fit = "contain"
    format: Format | None = None  # None: the original's format

    @property
    def name(self) -> str:
        """Stable, path-safe name, used in blob names and ETags."""
        name = str(self.size)
        if self.fit == "cover":
            name += "-cover"
        if self.format:
            name += f".{self.format}"
        return name


def default_allowlist() -> tuple[Size, ...]:
    return (Size(300, 300), Size(1200, 1200))


def parse(query: Mapping[str, str], *, max_dimension: int) -> Variant | None:
    """The variant a query asks for, or None for the original bytes."""
    unknown = set(query) - VARIANT_PARAMS
    if unknown:
        raise BadVariant(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
    if "w" not in query and "h" not in query:
        if set(query) - {"sig"}:
            raise BadVariant("fit and format need a size: give w and h")
        return None
    if "w" not in query or "h" not in query:
        raise BadVariant("give both w and h")
    dims = []
    for key in ("w", "h"):
        raw = query[key]
        if not raw.isdigit() or not 1 <= int(raw) <= max_dimension:
            raise BadVariant(f"{key} must be a whole number from 1 to {max_dimension}")
        dims.append(int(raw))
    fit = query.get("fit", "contain")
    if fit not in ("contain", "cover"):
        raise BadVariant("fit must be contain or cover")
    fmt = query.get("format")
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt is not None and fmt not in FORMATS:
        raise BadVariant(f"format must be one of {', '.join(FORMATS)}")
    return Variant(Size(dims[0], dims[1]), cast("Fit", fit), fmt)


def is_allowlisted(variant: Variant, allowlist: Collection[Size]) -> bool:
    """Allowlisted variants are rendered at upload: fit-in sizes in the original's format."""
    return variant.fit == "contain" and variant.format is None and variant.size in allowlist


def blob_name(image_id: str, variant: Variant | None) -> str:
    return image_id if variant is None else f"{image_id}.{variant.name}"


def etag(image_id: str, variant: Variant | None) -> str:
    return f'"{blob_name(image_id, variant)}"'


def etag_matches(if_none_match: str | None, tag: str) -> bool:
    """RFC 9110 weak comparison against an If-None-Match list."""
    if not if_none_match:
        return False
    for raw in if_none_match.split(","):
        candidate = raw.strip()
        if candidate == "*" or candidate.removeprefix("W/") == tag:
            return True
    return False


def canonical(path: str, query: Mapping[str, str]) -> bytes:
    """What is signed: the path and the variant parameters in a fixed order."""
    params = "&".join(f"{k}={query[k]}" for k in sorted(query) if k != "sig")
    return f"{path}?{params}".encode()


def sign(key: bytes, path: str, query: Mapping[str, str]) -> str:
    mac = hmac.new(key, canonical(path, query), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def signature_valid(key: bytes, path: str, query: Mapping[str, str]) -> bool:
    given = query.get("sig", "")
    return bool(given) and hmac.compare_digest(given, sign(key, path, query))
