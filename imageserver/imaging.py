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

from PIL import Image, features

from imageserver.variants import NEGOTIATED, Format, Size, Variant

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

ORIENTATION_TAG = 0x0112
# Orientations 5-8 turn the image a quarter: stored width is displayed height.
TRANSPOSED = frozenset({5, 6, 7, 8})
# What shows an image with EXIF orientation N upright (as ImageOps.exif_transpose does).
TURNS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
PIL_FORMATS: dict[str, Format] = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp"}
# What `format=auto` may choose with this Pillow: a build without libavif never offers AVIF.
NEGOTIABLE: tuple[Format, ...] = tuple(f for f in NEGOTIATED if features.check(f))
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
    mode: str = "RGB"  # Pillow's pixel mode, which sets the bytes per pixel in memory


# Measured peaks of a render above the process's baseline. Pillow keeps 1 byte per pixel for
# L and 4 for every other mode it resizes in (RGB included; palette and 1-bit images become
# RGB(A) first). At the peak a render holds the decoded source, a reduced intermediate (at
# most as large) and the result; an image with alpha is first premultiplied into another
# full-size copy; libwebp decodes into canvases of its own. Measured: a 7000x7000 RGBA PNG to
# 1200x1200: 422 MB; a 2048x2048 RGB PNG to 2000x2000: 47 MB; a 4000x4000 palette PNG to a
# JPEG: 152 MB; a 4000x4000 WebP upload: 244 MB.
ONE_BYTE_MODES = frozenset({"L"})
THREE_COPY_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La", "P", "1"})
WEBP_CANVASES = 12  # bytes per pixel that libwebp's decoder holds besides Pillow's image
# libavif's encoder (speed 8, one thread), per pixel encoded: measured 34 at 1200x1200 and 27
# at 4096x2730 on noise, the worst case for an encoder.
AVIF_ENCODER = 36
CODEC_WORKING_SET = 8 << 20  # libjpeg/zlib state and encoder buffers


def decoded_size(info: Probe, need: tuple[int, int]) -> tuple[int, int]:
    """The size `_decode` holds in memory when asked for `need` (either orientation: only the
    area matters here): JPEG
    decodes scaled by 1/2, 1/4 or 1/8 as far as that still covers it (Pillow's draft rule)."""
    # Displayed or stored orientation gives the same area: both sides swap together.
    width, height = info.width, info.height
    if info.format != "jpeg":
        return width, height
    scale = min(width // max(1, need[0]), height // max(1, need[1]))
    factor = next((f for f in (8, 4, 2) if f <= scale), 1)
    return -(-width // factor), -(-height // factor)


def memory_cost(info: Probe, need: tuple[int, int], encoded_bytes: int, output: Format | None = None) -> int:
    """Bytes a render of `info` down to `need` (encoded as `output`, else as the original)
    may take at its peak, from the header alone."""
    width, height = decoded_size(info, need)
    per_pixel = 1 if info.mode in ONE_BYTE_MODES else 4
    copies = 3 if info.mode in THREE_COPY_MODES else 2  # source (+ converted) + intermediate
    codec = WEBP_CANVASES if info.format == "webp" else 0
    result = need[0] * need[1] * (per_pixel + (AVIF_ENCODER if output == "avif" else 0))
    return width * height * (per_pixel * copies + codec) + result + encoded_bytes + CODEC_WORKING_SET


def upload_need(info: Probe, sizes: Iterable[Size]) -> tuple[int, int]:
    """The largest allowlisted rendition: what an upload decodes down to (the full image when
    there is none, to prove it decodes)."""
    fits = [fit_within(info.width, info.height, size) for size in sizes]
    return max(fits, key=lambda d: d[0] * d[1]) if fits else (info.width, info.height)


def variant_need(info: Probe, variant: Variant) -> tuple[int, int]:
    """What a variant decodes down to (displayed orientation): the fit-in size, or for a cover
    crop the scale at which the box is filled, never above the original."""
    box = variant.size
    if variant.fit == "contain":
        return fit_within(info.width, info.height, box)
    scale = min(max(box.width / info.width, box.height / info.height), 1.0)
    out_w, out_h = min(box.width, info.width), min(box.height, info.height)
    return max(out_w, math.ceil(info.width * scale)), max(out_h, math.ceil(info.height * scale))


def sniff(data: bytes) -> Format | None:
    """The format from the bytes themselves; Content-Type is never trusted."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def configure(limits: Limits) -> None:
    """Pillow's own bomb check at our limit, so the two never disagree (its default is ~89 MP).
    Past the limit Pillow only warns (`_open` refuses, with the exact count); past twice the
    limit it refuses by itself."""
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def _open(data: bytes, limits: Limits) -> tuple[Image.Image, Format]:
    fmt = sniff(data)
    if fmt is None:
        raise Rejected(415, "not a JPEG, PNG or WebP image")
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt.upper()])
    except Image.DecompressionBombError:
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
    """The EXIF orientation, from what was read with the header. Pillow's PNG getexif()
    decodes the whole image to look for an eXIf chunk after the pixels: a 190 KB bomb became
    200 MB before any check could refuse it. Such a late chunk is not honoured."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1
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
    return Probe(fmt, width, height, image.mode)


def fit_within(width: int, height: int, box: Size) -> tuple[int, int]:
    """Scale (never up) to fit inside the box, keeping the aspect ratio."""
    scale = min(box.width / width, box.height / height, 1.0)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _decode(data: bytes, limits: Limits, smallest_needed: tuple[int, int]) -> Image.Image:
    """Decode, as small as still covers `smallest_needed` (displayed size), oriented."""
    image, _ = _open(data, limits)
    orientation = _orientation(image)
    need = smallest_needed[::-1] if orientation in TRANSPOSED else smallest_needed
    try:
        if image.format == "JPEG":
            image.draft("RGB" if image.mode not in ("L", "CMYK") else image.mode, need)
        image.load()
    except Exception as error:  # truncated or corrupt data
        raise Rejected(400, f"cannot decode the image: {error}") from None
    turn = TURNS.get(orientation)
    return image.transpose(turn) if turn is not None else image


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
    elif fmt == "avif":
        # Speed 8: about WebP's encode time (24 ms for 300x200, 86 ms for 1200x800 here) and
        # size; 6, libavif's default, takes 3-5x longer for 15 % fewer bytes. One thread:
        # the render pool is the parallelism.
        ready.save(out, "AVIF", quality=60, speed=8, max_threads=1, **options)
    else:
        ready.save(out, "WEBP", quality=80, method=4, **options)
    return out.getvalue()


def encoded_format(head: bytes) -> Format | None:
    """What a blob we wrote is, from its first bytes (AVIF too, which uploads may not be)."""
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return "avif"
    return sniff(head)


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
def render_allowlisted(
    data: bytes, sizes: Iterable[Size], limits: Limits, info: Probe | None = None
) -> tuple[Probe, dict[Size, bytes]]:
    """Decode once and render every allowlisted fit-in size, largest first, each from the last.
    `info`: the probe of these very bytes, when admission has made it already."""
    info = info or probe(data, limits)
    sizes = tuple(sizes)
    targets = sorted(
        {size: fit_within(info.width, info.height, size) for size in sizes}.items(),
        key=lambda item: item[1][0] * item[1][1],
        reverse=True,
    )
    # With no sizes this decodes the whole image: an upload must still prove it decodes.
    current = _decode(data, limits, upload_need(info, sizes))
    rendered: dict[Size, bytes] = {}
    for size, dims in targets:
        current = _resized(current, dims)
        rendered[size] = encode(current, info.format)
    return info, rendered


@_untrusted
def render(data: bytes, variant: Variant, limits: Limits, info: Probe | None = None) -> tuple[bytes, Format]:
    """One on-demand variant: fit-in or cover-crop, in the asked (or original) format.
    `info`: the probe of these very bytes, when admission has made it already."""
    info = info or probe(data, limits)
    fmt = variant.format or info.format
    box = variant.size
    need = variant_need(info, variant)
    if variant.fit == "contain":
        image = _resized(_decode(data, limits, need), need)
        return encode(image, fmt), fmt
    # cover: scale so the box is filled, then take the centre; never upscale.
    scale = min(max(box.width / info.width, box.height / info.height), 1.0)
    out_w, out_h = min(box.width, info.width), min(box.height, info.height)
    image = _decode(data, limits, need)
    # Crop in the decoded image's coordinates (draft may have shrunk it already).
    factor = image.width / info.width
    crop_w, crop_h = out_w / scale * factor, out_h / scale * factor
    left, top = (image.width - crop_w) / 2, (image.height - crop_h) / 2
    cropped = image.resize(
        (out_w, out_h), RESAMPLE, box=(left, top, left + crop_w, top + crop_h), reducing_gap=REDUCING_GAP
    )
    return encode(cropped, fmt), fmt
