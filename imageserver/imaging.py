"""Pillow work: sniff, check limits, decode once, render variants, encode without metadata.

Speed comes from decoding as little as possible: `Image.draft()` lets libjpeg decode a JPEG
already scaled by 1/2, 1/4 or 1/8 (DCT scaling), so a 6 MP photo becomes a 300 px variant
without ever existing at full size; `reducing_gap` shrinks by whole factors before the
Lanczos filter. Upload renders every allowlisted size from one decode, largest first, each
from the previous one.

Every failure to read a user's bytes becomes `Rejected` (a 4xx), never an unhandled error.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from PIL import Image, ImageOps

from imageserver.variants import Format, Size, Variant

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

ORIENTATION_TAG = 0x0112
# Orientations 5-8 turn the image a quarter: stored width is displayed height.
TRANSPOSED = frozenset({5, 6, 7, 8})
PIL_FORMATS: dict[str, Format] = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp"}
RESAMPLE = Image.Resampling.LANCZOS
REDUCING_GAP = 3.0


class Rejected(Exception):
    """Input we will not process, with the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_dimension: int = 4096  # of a requested variant


@dataclass(frozen=True)
class Probe:
    format: Format
    width: int  # as displayed, after EXIF orientation
    height: int


def sniff(data: bytes) -> Format | None:
    """The format from the bytes themselves; Content-Type is never trusted."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _open(data: bytes, limits: Limits) -> tuple[Image.Image, Format]:
    fmt = sniff(data)
    if fmt is None:
        raise Rejected(415, "not a JPEG, PNG or WebP image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt.upper()])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Rejected(413, f"image has more pixels than the limit of {limits.max_pixels}") from None
    except Exception as error:  # any header Pillow cannot read is the client's problem
        raise Rejected(400, f"cannot read the {fmt} header: {error}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise Rejected(400, "image has no pixels")
    if width * height > limits.max_pixels:
        raise Rejected(413, f"image has {width * height} pixels, more than the limit of {limits.max_pixels}")
    return image, fmt


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block only loses the orientation
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def probe(data: bytes, limits: Limits) -> Probe:
    """Format and displayed size from the header alone: cheap, and checks the limits."""
    image, fmt = _open(data, limits)
    width, height = image.size
    if _orientation(image) in TRANSPOSED:
        width, height = height, width
    return Probe(fmt, width, height)


def fit_within(width: int, height: int, box: Size) -> tuple[int, int]:
    """Scale (never up) to fit inside the box, keeping the aspect ratio."""
    scale = min(box.width / width, box.height / height, 1.0)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _decode(data: bytes, limits: Limits, smallest_needed: tuple[int, int]) -> Image.Image:
    """Decode, as small as still covers `smallest_needed` (displayed size), oriented."""
    image, _ = _open(data, limits)
    turned = _orientation(image) in TRANSPOSED
    need = smallest_needed[::-1] if turned else smallest_needed
    try:
        if image.format == "JPEG":
            image.draft("RGB" if image.mode not in ("L", "CMYK") else image.mode, need)
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as error:  # truncated or corrupt data
        raise Rejected(400, f"cannot decode the image: {error}") from None
    return image


def _for_format(image: Image.Image, fmt: Format) -> Image.Image:
    if fmt == "jpeg":
        if image.mode in ("RGBA", "LA", "P", "PA"):
            rgba = image.convert("RGBA")
            background = Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.getchannel("A"))
            return background
        return image if image.mode in ("RGB", "L") else image.convert("RGB")
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
        return image.convert("RGBA" if "A" in image.getbands() else "RGB")
    return image


def encode(image: Image.Image, fmt: Format) -> bytes:
    """Encode with no EXIF, XMP or comments; the ICC profile stays so colours stay right."""
    out = io.BytesIO()
    ready = _for_format(image, fmt)
    icc = image.info.get("icc_profile")
    options: dict[str, object] = {"icc_profile": icc} if icc else {}
    if fmt == "jpeg":
        ready.save(out, "JPEG", quality=85, **options)
    elif fmt == "png":
        ready.save(out, "PNG", compress_level=6, **options)
    else:
        ready.save(out, "WEBP", quality=80, method=4, **options)
    return out.getvalue()


def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if image.size == size:
        return image
    return image.resize(size, RESAMPLE, reducing_gap=REDUCING_GAP)


def _untrusted(work: Callable[P, R]) -> Callable[P, R]:
    """Pillow parses what users send: past the checks above, whatever it still raises about the
    image (a mode it cannot resize or encode, a chunk it chokes on) is a 422, never a 500."""

    @functools.wraps(work)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return work(*args, **kwargs)
        except Rejected:
            raise
        except (MemoryError, RecursionError):
            raise
        except Exception as error:
            log.warning("image could not be processed", extra={"error": repr(error)})
            raise Rejected(422, f"cannot process this image: {error}") from None

    return guarded


@_untrusted
def render_allowlisted(data: bytes, sizes: Iterable[Size], limits: Limits) -> tuple[Probe, dict[Size, bytes]]:
    """Decode once and render every allowlisted fit-in size, largest first, each from the last."""
    info = probe(data, limits)
    targets = sorted(
        {size: fit_within(info.width, info.height, size) for size in sizes}.items(),
        key=lambda item: item[1][0] * item[1][1],
        reverse=True,
    )
    if not targets:
        _decode(data, limits, (info.width, info.height))  # still prove the image decodes
        return info, {}
    smallest_needed = targets[0][1]
    current = _decode(data, limits, smallest_needed)
    rendered: dict[Size, bytes] = {}
    for size, dims in targets:
        current = _resized(current, dims)
        rendered[size] = encode(current, info.format)
    return info, rendered


@_untrusted
def render(data: bytes, variant: Variant, limits: Limits) -> tuple[bytes, Format]:
    """One on-demand variant: fit-in or cover-crop, in the asked (or original) format."""
    info = probe(data, limits)
    fmt = variant.format or info.format
    box = variant.size
    if variant.fit == "contain":
        dims = fit_within(info.width, info.height, box)
        image = _resized(_decode(data, limits, dims), dims)
        return encode(image, fmt), fmt
    # cover: scale so the box is filled, then take the centre; never upscale.
    scale = min(max(box.width / info.width, box.height / info.height), 1.0)
    out_w, out_h = min(box.width, info.width), min(box.height, info.height)
    need = (max(out_w, math.ceil(info.width * scale)), max(out_h, math.ceil(info.height * scale)))
    image = _decode(data, limits, need)
    # Crop in the decoded image's coordinates (draft may have shrunk it already).
    factor = image.width / info.width
    crop_w, crop_h = out_w / scale * factor, out_h / scale * factor
    left, top = (image.width - crop_w) / 2, (image.height - crop_h) / 2
    cropped = image.resize(
        (out_w, out_h), RESAMPLE, box=(left, top, left + crop_w, top + crop_h), reducing_gap=REDUCING_GAP
    )
    return encode(cropped, fmt), fmt
