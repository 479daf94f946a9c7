"""What a GET asks for: the original, an allowlisted variant, or a signed on-demand one.

Everything here is a pure function of the request, so the ETag is known before any image is
read, and a signature can be checked before any work is done.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Literal, cast

Fit = Literal["contain", "cover"]
Format = Literal["jpeg", "png", "webp", "avif", "gif"]  # of a variant
FORMATS: tuple[Format, ...] = ("jpeg", "png", "webp", "avif", "gif")
ANIMATED: frozenset[Format] = frozenset({"gif", "webp", "avif"})  # a variant in these keeps an animation
CONTENT_TYPES: dict[str, str] = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "avif": "image/avif",
    "gif": "image/gif",
    "heic": "image/heic",  # an original's
}
AUTO = "auto"  # format=auto: negotiated from Accept
# What `auto` may choose, best first; without either, the original's format (JPEG for photos).
NEGOTIATED: tuple[Format, ...] = ("avif", "webp")
DefaultFormat = Literal["original", "auto"]
IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")
VARIANT_PARAMS = frozenset({"w", "h", "fit", "format", "sig"})
# Parsed strictly, ASCII only: str.isdigit() takes "²" and int() then refuses it.
DIMENSION = re.compile(r"[0-9]{1,5}")
SIGNATURE = re.compile(r"[A-Za-z0-9_-]{43}")  # an HMAC-SHA256 in unpadded base64url
MAX_VALUE_LENGTH = 64


def _renderer(engine: str = "pillow", libraries: str = "") -> str:
    """What makes a variant's bytes: the rendering code, the engine and the codec libraries.
    A build that renders differently has another tag, so it never serves, or is served,
    another's variants."""
    modules = ("imaging.py", "vips_engine.py") if engine != "pillow" else ("imaging.py",)
    code = b"".join(Path(__file__).with_name(name).read_bytes() for name in modules)
    codecs = f"{metadata.version('pillow')} {metadata.version('pillow-heif')} {libraries}".strip()
    tag = code + codecs.encode() + (b"" if engine == "pillow" else engine.encode())
    return hashlib.sha256(tag).hexdigest()[:8]


_RENDERER = [_renderer()]  # one per process: set at start-up, with the engine (`imaging.configure`)


def renderer() -> str:
    """The tag of this process's renderer, in every variant's blob name and ETag."""
    return _RENDERER[0]


def use_renderer(engine: str, libraries: str) -> None:
    _RENDERER[0] = _renderer(engine, libraries)


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


def single_values(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The query as one value per parameter. A repeated parameter is refused rather than read
    first- or last-wins: a cache in front of us could read the other one."""
    query: dict[str, str] = {}
    for key, value in items:
        if key in query:
            raise BadVariant(f"give {_shown(key)} only once")
        query[key] = value
    return query


def _shown(text: str) -> str:
    """A client's text, safe and short enough to repeat in an error message."""
    return text if len(text) <= 40 and text.isascii() and text.isprintable() else ascii(text[:40])


def parse(
    query: Mapping[str, str],
    *,
    max_dimension: int,
    accept: str | None = None,
    default_format: DefaultFormat = "original",
    negotiable: tuple[Format, ...] = NEGOTIATED,
) -> Variant | None:
    """The variant a query asks for, or None for the original bytes. `format=auto` (or no
    format, when the deployment's default is `auto`) is decided here from `accept`."""
    unknown = set(query) - VARIANT_PARAMS
    if unknown:
        raise BadVariant(f"unknown query parameter(s): {', '.join(_shown(k) for k in sorted(unknown)[:5])}")
    for key, value in query.items():
        if len(value) > MAX_VALUE_LENGTH:
            raise BadVariant(f"{key} is longer than {MAX_VALUE_LENGTH} characters")
    if "sig" in query and not SIGNATURE.fullmatch(query["sig"]):
        raise BadVariant("sig must be a signature: 43 URL-safe base64 characters")
    if "w" not in query and "h" not in query:
        if set(query) - {"sig"}:
            raise BadVariant("fit and format need a size: give w and h")
        return None
    if "w" not in query or "h" not in query:
        raise BadVariant("give both w and h")
    dims = []
    for key in ("w", "h"):
        raw = query[key]
        if not DIMENSION.fullmatch(raw) or not 1 <= int(raw) <= max_dimension:
            raise BadVariant(f"{key} must be a whole number from 1 to {max_dimension}")
        dims.append(int(raw))
    fit = query.get("fit", "contain")
    if fit not in ("contain", "cover"):
        raise BadVariant("fit must be contain or cover")
    fmt = _format(query, accept, default_format, negotiable)
    return Variant(Size(dims[0], dims[1]), cast("Fit", fit), fmt)


def _format(
    query: Mapping[str, str],
    accept: str | None,
    default_format: DefaultFormat,
    negotiable: tuple[Format, ...],
) -> Format | None:
    fmt = query.get("format")
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt is not None and fmt != AUTO and fmt not in FORMATS:
        raise BadVariant(f"format must be one of {', '.join((*FORMATS, AUTO))}")
    if varies(query, default_format):
        return negotiate(accept, negotiable)
    if fmt is not None and fmt in NEGOTIATED and fmt not in negotiable:
        raise BadVariant(f"format {fmt} cannot be encoded here: ask for {', '.join(negotiable or ('jpeg',))}")
    return cast("Format | None", fmt)


def varies(query: Mapping[str, str], default_format: DefaultFormat) -> bool:
    """Whether the answer depends on Accept (and must say `Vary: Accept`)."""
    if "w" not in query:
        return False  # the original is the original
    fmt = query.get("format")
    return fmt == AUTO or (fmt is None and default_format == AUTO)


def negotiate(accept: str | None, negotiable: tuple[Format, ...] = NEGOTIATED) -> Format | None:
    """The format `auto` picks from an Accept header: of AVIF and WebP, the one named with the
    highest q (AVIF on a tie), else None, the original's format. Only a type named exactly
    counts: `image/*` and `*/*` are sent by clients that cannot show either (thumbor #1584
    served AVIF to them from a cache keyed without the format). `negotiable`: what this
    build's codecs can write."""
    best: tuple[float, int, Format] | None = None
    for item in (accept or "")[:2048].split(","):
        media, *params = (part.strip() for part in item.split(";"))
        fmt = _MEDIA_FORMATS.get(media.lower())
        if fmt is None or fmt not in negotiable:
            continue
        q = _quality(params)
        rank = (q, -NEGOTIATED.index(fmt), fmt)
        if q > 0 and (best is None or rank > best):
            best = rank
    return best[2] if best is not None else None


_MEDIA_FORMATS: dict[str, Format] = {CONTENT_TYPES[fmt]: fmt for fmt in NEGOTIATED}
_QVALUE = re.compile(r"q=(0(\.[0-9]{0,3})?|1(\.0{0,3})?)", re.ASCII | re.IGNORECASE)


def _quality(params: Iterable[str]) -> float:
    for param in params:
        found = _QVALUE.fullmatch(param.replace(" ", ""))
        if found is not None:
            return float(found.group(1))
        if param.lower().startswith("q="):
            return 0.0  # a weight we cannot read: not taken as consent
    return 1.0


def is_allowlisted(variant: Variant, allowlist: Collection[Size]) -> bool:
    """Allowlisted variants are rendered at upload: fit-in sizes in the original's format."""
    return variant.fit == "contain" and variant.format is None and variant.size in allowlist


def is_allowlisted_size(variant: Variant, allowlist: Collection[Size]) -> bool:
    """An allowlisted fit-in size in a negotiated format: no signature needed (a bounded set
    of renders per image, each rendered once and kept)."""
    return variant.fit == "contain" and variant.format in (None, *NEGOTIATED) and variant.size in allowlist


def blob_name(image_id: str, variant: Variant | None) -> str:
    """The original's name is its id; a variant's also names the renderer that made it."""
    return image_id if variant is None else f"{image_id}.{variant.name}.r{renderer()}"


def etag(image_id: str, variant: Variant | None) -> str:
    return f'"{blob_name(image_id, variant)}"'


def etag_matches(if_none_match: str | None, tag: str) -> bool:
    """RFC 9110 weak comparison against an If-None-Match list of tags. `*` is not a tag: it
    matches only an image that exists, which only a lookup can tell (`matches_any`)."""
    if not if_none_match:
        return False
    return any(raw.strip().removeprefix("W/") == tag for raw in if_none_match.split(","))


def matches_any(if_none_match: str | None) -> bool:
    return if_none_match is not None and if_none_match.strip() == "*"


def canonical(path: str, query: Mapping[str, str]) -> bytes:
    """What is signed: the path and the variant parameters in a fixed order."""
    params = "&".join(f"{k}={query[k]}" for k in sorted(query) if k != "sig")
    return f"{path}?{params}".encode()


def sign(key: bytes, path: str, query: Mapping[str, str]) -> str:
    mac = hmac.new(key, canonical(path, query), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def signature_valid(key: bytes, path: str, query: Mapping[str, str]) -> bool:
    given = query.get("sig", "")
    # compare_digest raises TypeError on non-ASCII str: compare bytes, always.
    expected = sign(key, path, query).encode()
    return bool(given) and hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected)
