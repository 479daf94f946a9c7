"""Pillow work: sniff, check limits, decode once, render variants, encode without metadata.

Speed comes from decoding as little as possible: `Image.draft()` lets libjpeg decode a JPEG
already scaled by 1/2, 1/4 or 1/8 (DCT scaling), so a 6 MP photo becomes a 300 px variant
without ever existing at full size; `reducing_gap` shrinks by whole factors before the
Lanczos filter. Upload renders every allowlisted size from one decode, largest first, each
from the previous one.

Uploads may be JPEG, PNG, WebP, GIF, AVIF or HEIC/HEIF (through pillow-heif), each known from
its bytes. Browsers other than Safari cannot show HEIC, so its variants are JPEGs; every other
format's variants are in its own format unless another is asked for (`OUTPUT_FOR`).

Animation (GIF, WebP, AVIF sequences): a variant in a format that animates (GIF, WebP, AVIF:
what `format=auto` negotiates for most browsers) keeps every frame, with its duration and the
loop count (AVIF has none: browsers loop it forever); in JPEG or PNG it is the first frame. An
animation has at most `max_frames` frames, and frames x width x height up to `max_pixels`
(a 500 x 500 GIF may have 200 frames at the default 50 MP); a GIF frame outside its canvas
is refused (Pillow would grow the canvas to hold it).

Colour: a variant of an image whose ICC profile is not sRGB (Display P3 from a phone, Adobe
RGB, a CMYK press profile) is converted to sRGB and carries no profile, which is what the web
assumes of an untagged image: colours come out right in every browser, including the ones
that ignore profiles, and a 300 px thumbnail does not carry a 0.5-3 KB profile. CMYK without
a profile is converted naively (Pillow's formula; Adobe's inverted CMYK JPEGs are undone).
A profile is judged by what it does, not by its name: one that leaves colours as sRGB has
them is simply dropped. Greyscale keeps a greyscale profile; a profile that cannot be read,
is not for the image's colours, or is larger than 4 MiB is dropped. Originals are never
touched: they keep every byte.

Every failure to read a user's bytes becomes `Rejected` (a 4xx), never an unhandled error.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import math
import struct
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Literal, ParamSpec, TypeVar, cast

from PIL import Image, ImageChops, ImageCms, features

from imageserver import variants
from imageserver.variants import ANIMATED, NEGOTIATED, Format, Size, Variant

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
Source = Literal["jpeg", "png", "webp", "gif", "avif", "heic"]
PIL_NAMES: dict[Source, str] = {
    "jpeg": "JPEG",
    "png": "PNG",
    "webp": "WEBP",
    "gif": "GIF",
    "avif": "AVIF",
    "heic": "HEIF",
}
# The format of a variant nobody chose a format for.
OUTPUT_FOR: dict[Source, Format] = {
    "jpeg": "jpeg",
    "png": "png",
    "webp": "webp",
    "gif": "gif",
    "avif": "avif",
    "heic": "jpeg",
}
# What this build reads: a Pillow without libavif refuses AVIF (415).
READABLE: frozenset[Source] = frozenset(fmt for fmt in PIL_NAMES if fmt != "avif" or features.check("avif"))
# ISO BMFF brands (the `ftyp` box) of HEIF images: HEVC-coded, or a generic image file
# that does not also say AVIF.
SNIFF_BYTES = 4096  # of a file, enough to know its format (an ftyp box is no larger here)
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
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
    max_frames: int = 1000  # of an animation: 40 s at 25 frames a second


@dataclass(frozen=True)
class Probe:
    format: Source
    width: int  # as displayed, after EXIF orientation
    height: int
    mode: str = "RGB"  # Pillow's pixel mode, which sets the bytes per pixel in memory
    frames: int = 1  # of an animation

    @property
    def output(self) -> Format:
        """The format of a variant nobody chose a format for."""
        return OUTPUT_FOR[self.format]


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
# Decoders holding the image in their own buffers besides Pillow's, per pixel: dav1d's and
# libde265's YUV planes and the RGB copy libavif or libheif hands over. Measured (see
# test_admission_cost): a 3000x3000 render near full size peaked at 13.7 bytes a pixel from
# AVIF and 11.6 from HEIC, where 8 + 2 copies of 4 + the result price 20.
DECODER_COPIES: dict[Source, int] = {"webp": WEBP_CANVASES, "avif": 8, "heic": 8}
# Pillow's GIF encoder quantizes a frame to 256 colours in buffers of its own, by result
# pixel on colour noise (the worst case): 27 bytes at 1200x1200, 24 at 2000x2000, 20 at 4096.
GIF_ENCODER = 32
FRAME_OVERHEAD = 8 << 10  # per frame held: the image objects and a palette (measured ~4 KiB)
CODEC_WORKING_SET = 8 << 20  # libjpeg/zlib state and encoder buffers


def decoded_size(info: Probe, need: tuple[int, int]) -> tuple[int, int]:
    """The size `_decode` holds in memory when asked for `need` (either orientation: only the
    area matters here): JPEG
    decodes scaled by 1/2, 1/4 or 1/8 as far as that still covers it (Pillow's draft rule)."""
    # Displayed or stored orientation gives the same area: both sides swap together.
    factor = jpeg_shrink(info, need)
    return -(-info.width // factor), -(-info.height // factor)


def jpeg_shrink(info: Probe, need: tuple[int, int]) -> int:
    """The 1/2, 1/4 or 1/8 a JPEG is decoded at (1 for other formats): the largest that
    still covers `need`."""
    if info.format != "jpeg":
        return 1
    scale = min(info.width // max(1, need[0]), info.height // max(1, need[1]))
    return next((f for f in (8, 4, 2) if f <= scale), 1)


def memory_cost(info: Probe, need: tuple[int, int], encoded_bytes: int, output: Format | None = None) -> int:
    """Bytes a render of `info` down to `need` (encoded as `output`, else as its default)
    may take at its peak, from the header alone. An animation kept as one holds every frame
    of its result (twice: the upload's sizes together, the frames the encoder makes of them)."""
    output = output or info.output
    width, height = decoded_size(info, need)
    per_pixel = 1 if info.mode in ONE_BYTE_MODES else 4
    copies = 3 if info.mode in THREE_COPY_MODES else 2  # source (+ converted) + intermediate
    codec = DECODER_COPIES.get(info.format, 0)
    kept = info.frames * 2 if info.frames > 1 and output in ANIMATED else 1
    encoder = {"avif": AVIF_ENCODER, "gif": GIF_ENCODER}.get(output, 0)
    result = need[0] * need[1] * (4 * kept + encoder) + FRAME_OVERHEAD * kept
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


def sniff(data: bytes) -> Source | None:
    """The format from the bytes themselves; Content-Type is never trusted."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return _iso_brand(data)


def _iso_brand(data: bytes) -> Source | None:
    """AVIF or HEIF from an ISO BMFF `ftyp` box: its major brand and the compatible ones (as
    many as `data` holds: `SNIFF_BYTES` hold them all in the files encoders write)."""
    size = int.from_bytes(data[:4], "big")
    if data[4:8] != b"ftyp" or not 16 <= size <= 4096 or size % 4 or len(data) < 12:
        return None
    brands = {data[8:12], *(data[i : i + 4] for i in range(16, min(size, len(data)) - 3, 4))}
    if brands & {b"avif", b"avis"}:
        return "avif"
    return "heic" if brands & _HEIF_BRANDS else None


Engine = Literal["pillow", "vips"]
ENGINES: tuple[Engine, ...] = ("pillow", "vips")
_ENGINE: list[Engine] = ["pillow"]  # one per process, set at start-up


def configure(limits: Limits, engine: Engine = "pillow") -> None:
    """Pillow's own bomb check at our limit, so the two never disagree (its default is ~89 MP).
    Past the limit Pillow only warns (`_open` refuses, with the exact count); past twice the
    limit it refuses by itself. `engine`: who renders what it can (`vips_engine.takes`);
    Pillow renders the rest, and probes every upload whichever engine renders it."""
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    use_engine(engine)


def use_engine(engine: Engine) -> None:
    """The engine of this process, and the renderer tag its variants are named by."""
    if engine not in ENGINES:
        raise ValueError(f"no engine {engine!r}: {', '.join(ENGINES)}")
    _ENGINE[0] = engine
    variants.use_renderer(engine, _vips().versions() if engine == "vips" else "")


def _vips() -> ModuleType:
    """The libvips engine, imported when chosen: it imports this module, and a Pillow
    deployment never loads libvips."""
    from imageserver import vips_engine  # noqa: PLC0415

    return vips_engine


@functools.cache
def _read_heif() -> None:
    """HEIC/HEIF decoding, from pillow-heif (a wheel with libheif and libde265 inside): loaded
    by the first HEIC, not at start-up (its libraries are 8 MiB of every process's memory).
    The primary image only, not the thumbnails or a burst's others, decoded on the render
    thread alone (the render pool is the parallelism)."""
    import pillow_heif  # noqa: PLC0415

    pillow_heif.register_heif_opener(thumbnails=False)
    pillow_heif.options.DECODE_THREADS = 1


def _open(data: bytes, limits: Limits) -> tuple[Image.Image, Source]:
    fmt = sniff(data)
    if fmt is None or fmt not in READABLE:
        names = ", ".join(f.upper().replace("WEBP", "WebP") for f in PIL_NAMES if f in READABLE)
        raise Rejected(415, f"not an image this server reads ({names})")
    if fmt == "heic":
        _read_heif()
    try:
        image = Image.open(io.BytesIO(data), formats=[PIL_NAMES[fmt]])
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


def _frames(image: Image.Image, data: bytes, fmt: Source, limits: Limits) -> int:
    """How many frames an animation has (1 for a still or a HEIF: its primary image), within
    the frame limit and all of them within the pixel limit. Nothing is decoded: a GIF's blocks
    are walked here, WebP's and AVIF's demuxers read their frame headers."""
    if fmt not in ("gif", "webp", "avif"):
        return 1
    try:
        frames = _gif_frames(data) if fmt == "gif" else int(getattr(image, "n_frames", 1))
    except Rejected:
        raise
    except Exception as error:
        raise Rejected(400, f"cannot read the {fmt} frames: {error}") from None
    if frames > limits.max_frames:
        raise Rejected(413, f"animation has {frames} frames, more than the limit of {limits.max_frames}")
    width, height = image.size
    if frames * width * height > limits.max_pixels:
        raise Rejected(
            413,
            f"animation has {frames} frames of {width}x{height} pixels: {frames * width * height} "
            f"pixels, more than the limit of {limits.max_pixels}",
        )
    return max(1, frames)


def _gif_frames(data: bytes) -> int:
    """The frames of a GIF, from its blocks: headers read, pixel data skipped, each frame
    checked inside the canvas. Pillow grows the canvas to hold a frame that is not (a 66-byte
    file became 858 MiB), after the price was set from the canvas, so the blocks are read
    exactly as Pillow's reader reads them (GifImagePlugin._seek): a frame Pillow finds is a
    frame counted and checked here."""
    if len(data) < 13:
        raise Rejected(400, "the GIF header is cut short")
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    at = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # the global colour table
    frames = 0
    while at < len(data) and data[at] != 0x3B:  # the trailer ends the file
        block_type, at = data[at], at + 1
        if block_type == 0x21 and at < len(data):
            at = _past_extension(data, at, first_frame=not frames)
        elif block_type == 0x2C:  # an image: where it goes, its colours, then its data
            if at + 10 > len(data):
                raise Rejected(400, f"GIF frame {frames + 1} is cut short")
            left, top, w, h, flags = struct.unpack_from("<HHHHB", data, at)
            if left + w > width or top + h > height:
                raise Rejected(
                    422,
                    f"GIF frame {frames + 1} ({w}x{h} at {left},{top}) lies outside "
                    f"its {width}x{height} canvas",
                )
            at += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # past the LZW code size
            at = _past_sub_blocks(data, at)
            frames += 1
        # any other byte is passed over, as Pillow does
    return frames


def _sub_block(data: bytes, at: int) -> tuple[bytes, int]:
    """One data sub-block (empty at its terminator or the end), and where the next starts."""
    size = data[at] if at < len(data) else 0
    return data[at + 1 : at + 1 + size], at + 1 + size


def _past_sub_blocks(data: bytes, at: int) -> int:
    """Past the sub-blocks that start here and their terminator."""
    block, at = _sub_block(data, at)
    while block:
        block, at = _sub_block(data, at)
    return at


def _past_extension(data: bytes, at: int, *, first_frame: bool) -> int:
    """Past an extension, from its label, as Pillow reads it: its first sub-block alone, then
    (but for a comment, which ends at its first empty one) sub-blocks up to an empty one, so
    an empty first one is not the end."""
    label, (block, at) = data[at], _sub_block(data, at + 1)
    if label == 0xFE:
        while block:
            block, at = _sub_block(data, at)
        return at
    if label == 0xFF and first_frame and block.startswith(b"NETSCAPE2.0"):
        _, at = _sub_block(data, at)
    return _past_sub_blocks(data, at)


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
    frames = _frames(image, data, fmt, limits)
    width, height = image.size
    if _orientation(image) in TRANSPOSED:
        width, height = height, width
    return Probe(fmt, width, height, image.mode, frames)


@dataclass(frozen=True)
class Header:
    """What Pillow reads of a file with its header, which every engine follows so that all
    make the same variant of one file."""

    orientation: int
    profile: bytes | None
    colour_key: bool  # an RGB or grey PNG's tRNS: Pillow's handling differs by output format


def header(data: bytes, limits: Limits) -> Header:
    image, _ = _open(data, limits)
    profile = image.info.get("icc_profile")
    return Header(
        _orientation(image),
        profile if isinstance(profile, bytes) and profile else None,
        image.mode not in ("P", "PA") and "transparency" in image.info,
    )


def fit_within(width: int, height: int, box: Size) -> tuple[int, int]:
    """Scale (never up) to fit inside the box, keeping the aspect ratio."""
    scale = min(box.width / width, box.height / height, 1.0)
    return max(1, round(width * scale)), max(1, round(height * scale))


Shape = Callable[[Image.Image], Image.Image]


@dataclass
class Frames:
    """A decoded still (one frame) or animation, each frame with its duration in ms."""

    images: list[Image.Image]
    durations: list[int]
    loop: int | None = None  # the animation's loop count (0: forever), None: play once


def _decoded(image: Image.Image, smallest_needed: tuple[int, int], frames: int = 1) -> Iterator[Image.Image]:
    """The first `frames` frames (a still has one) of an opened image, oriented, in a mode
    that resizes well; the first one decoded as small as still covers `smallest_needed`
    (displayed size). Each frame is its own image (reading the next one reuses the decoder's),
    its duration in its info."""
    orientation = _orientation(image)
    turn = TURNS.get(orientation)
    need = smallest_needed[::-1] if orientation in TRANSPOSED else smallest_needed
    canvas = image.size
    for index in range(frames):
        try:
            if index:
                image.seek(index)
            elif image.format == "JPEG":
                image.draft("RGB" if image.mode not in ("L", "CMYK") else image.mode, need)
            image.load()
        except EOFError:
            raise Rejected(400, f"the animation ends after {index} of its {frames} frames") from None
        except Exception as error:  # truncated or corrupt data
            raise Rejected(400, f"cannot decode the image: {error}") from None
        if index and image.size != canvas:
            raise Rejected(422, "the animation's frames change its size")
        frame = image.convert("RGBA") if frames > 1 else _resizable(image)
        frame.info["duration"] = int(image.info.get("duration", 0))
        yield frame.transpose(turn) if turn is not None else frame


def _resizable(image: Image.Image) -> Image.Image:
    """Palette and 1-bit images in a mode Pillow resizes with a real filter: it resizes those
    with nearest-neighbour, whatever filter it is given."""
    if image.mode == "1":
        return image.convert("L")
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    return image


def _shaped(
    data: bytes, limits: Limits, need: tuple[int, int], info: Probe, output: Format, *shapes: Shape
) -> list[Frames]:
    """Every frame when `output` animates, else the first, through each shape in turn (each
    one takes the last one's result): one result per shape. Frames are decoded one at a time,
    so only the results are ever held all together."""
    count = info.frames if output in ANIMATED else 1
    image, _ = _open(data, limits)
    # An AVIF says nothing of loops, and browsers loop its animations forever.
    loop = image.info.get("loop", 0 if info.format == "avif" else None) if count > 1 else None
    results: list[list[Image.Image]] = [[] for _ in shapes]
    durations: list[int] = []
    for frame in _decoded(image, need, count):
        durations.append(frame.info["duration"])
        current = frame
        for shape, kept in zip(shapes, results, strict=True):
            current = shape(current)
            kept.append(current)
    return [Frames(kept, durations, loop if isinstance(loop, int) else None) for kept in results]


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


SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
MAX_PROFILE_BYTES = 4 << 20  # a press CMYK profile is 0.5-3 MB; past this it is dropped
KEEP = "keep"  # a greyscale image's profile, kept as it is
# Colours an sRGB profile leaves as they are, and any other one moves.
_PROBE_COLOURS = [
    (200, 120, 90),
    (120, 170, 60),
    (150, 100, 180),
    (30, 30, 30),
    (128, 128, 128),
    (240, 240, 240),
]


Rule = ImageCms.ImageCmsTransform | str | None  # a transform, KEEP, or None: drop the profile


class _ColourRules:
    """What to do with each embedded profile, decided once per profile and image mode and
    kept by the profile's digest (not its bytes: a client's profile is up to 4 MiB). A
    transform is shared by the render threads, built without LittleCMS's 1-pixel cache,
    which is not thread-safe."""

    def __init__(self, capacity: int = 32) -> None:
        self.capacity = capacity
        self._rules: OrderedDict[tuple[bytes, str], Rule] = OrderedDict()
        self._lock = threading.Lock()

    def rule(self, profile: bytes, mode: str) -> Rule:
        if len(profile) > MAX_PROFILE_BYTES:  # before hashing it
            return None
        key = (hashlib.sha256(profile).digest(), mode)
        with self._lock:
            if key in self._rules:
                self._rules.move_to_end(key)
                return self._rules[key]
        rule = _colour_rule(profile, mode)
        with self._lock:
            self._rules[key] = rule
            while len(self._rules) > self.capacity:
                self._rules.popitem(last=False)
        return rule


def _colour_rule(profile: bytes, mode: str) -> Rule:
    """The transform to sRGB; KEEP for a greyscale profile on a greyscale image; None to drop
    the profile: sRGB already (judged by what it does to colours, not by its name: a linear
    "sRGB" is not sRGB), unreadable (a browser would ignore it too), too large, or not for
    this image's colours."""
    if len(profile) > MAX_PROFILE_BYTES:
        return None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        space = source.profile.xcolor_space.strip()
        if mode in ("L", "LA"):
            return KEEP if space == "GRAY" else None
        if (space, mode) not in (("RGB", "RGB"), ("RGB", "RGBA"), ("CMYK", "CMYK")):
            return None
        output = "RGBA" if mode == "RGBA" else "RGB"
        transform = ImageCms.buildTransform(source, SRGB, mode, output, flags=ImageCms.Flags.NOCACHE)
        if mode != "CMYK" and _moves_nothing(transform, mode):
            return None
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError, AttributeError) as error:
        log.info("colour profile ignored", extra={"error": str(error)})
        return None
    return transform


def _moves_nothing(transform: ImageCms.ImageCmsTransform, mode: str) -> bool:
    """Whether a transform leaves colours as they are (within a level): an sRGB profile."""
    probe = Image.new(mode, (len(_PROBE_COLOURS), 1))
    probe.putdata([(*colour, 255) if mode == "RGBA" else colour for colour in _PROBE_COLOURS])
    moved = ImageCms.applyTransform(probe, transform)
    assert moved is not None  # not in place
    difference = ImageChops.difference(probe.convert("RGB"), moved.convert("RGB"))
    return max(high for _, high in cast("tuple[tuple[int, int], ...]", difference.getextrema())) <= 1


COLOUR_RULES = _ColourRules()


def in_srgb(
    image: Image.Image, known: dict[tuple[int, str], tuple[bytes, Rule]] | None = None
) -> tuple[Image.Image, bytes | None]:
    """The image in sRGB and no profile, or (greyscale) as it is and its greyscale profile.
    `known`: the rules of the profiles seen so far in this encode (every frame of an animation
    carries the same profile: it is hashed once, not once a frame)."""
    profile = image.info.get("icc_profile")
    if not profile or not isinstance(profile, bytes):
        return image, None
    seen = known.get((id(profile), image.mode)) if known is not None else None
    if seen is not None and seen[0] is profile:
        rule = seen[1]
    else:
        rule = COLOUR_RULES.rule(profile, image.mode)
        if known is not None:  # the profile is kept with its rule, so its id is not reused
            known[(id(profile), image.mode)] = (profile, rule)
    if rule is None:
        return image, None
    if isinstance(rule, str):
        return image, profile
    converted = ImageCms.applyTransform(image, rule)
    assert converted is not None  # not in place
    return converted, None


def encode_frames(frames: Frames, fmt: Format) -> bytes:
    """A still, or an animation in a format that animates (others take the first frame), in
    sRGB, with no EXIF, XMP or comments."""
    out = io.BytesIO()
    ready: list[Image.Image] = []
    profile: bytes | None = None
    # Taken from the frames as each is converted: one frame at a time has two copies.
    pending, frames.images = (frames.images if fmt in ANIMATED else frames.images[:1]), []
    pending.reverse()
    known: dict[tuple[int, str], tuple[bytes, Rule]] = {}
    while pending:
        converted, profile = in_srgb(pending.pop(), known)
        ready.append(_for_format(converted, fmt))
    animated, durations = len(ready) > 1, frames.durations
    if fmt == "gif" and animated:
        ready, durations = _distinct_frames(ready, durations)
    # Named even when empty: encoders take what the image's info has that they are not given
    # (PNG and AVIF its profile, JPEG and GIF a comment the original carried).
    options: dict[str, object] = {"icc_profile": profile, "comment": b""}
    if animated:  # (a GIF's frames may have become one, which still says how long it shows)
        options.update(save_all=True, append_images=ready[1:], duration=durations)
        if frames.loop is not None:
            options["loop"] = frames.loop
    first = ready[0]
    if fmt == "jpeg":
        first.save(out, "JPEG", quality=85, **options)
    elif fmt == "png":
        first.save(out, "PNG", compress_level=6, **options)
    elif fmt == "avif":
        # Speed 8: about WebP's encode time (24 ms for 300x200, 86 ms for 1200x800 here) and
        # size; 6, libavif's default, takes 3-5x longer for 15 % fewer bytes. One thread:
        # the render pool is the parallelism.
        first.save(out, "AVIF", quality=60, speed=8, max_threads=1, **options)
    elif fmt == "gif":
        # Each frame whole (disposal 2 clears it before the next): frames were composited
        # when they were read, and a resized frame differs everywhere from the last one.
        first.save(out, "GIF", disposal=2, **options)
    else:
        first.save(out, "WEBP", quality=80, method=4, **options)
    return out.getvalue()


GIF_LONGEST_DELAY = 655_350  # ms: a GIF frame's delay is 16 bits of hundredths of a second


def _distinct_frames(images: list[Image.Image], durations: list[int]) -> tuple[list[Image.Image], list[int]]:
    """A frame the same as the one before it is shown longer instead, never past what a GIF
    can say: Pillow's encoder merges such frames itself, and refuses the sum when it is too
    long for a GIF (two identical frames of 400 s were a 422)."""
    kept, times = [images[0]], [min(durations[0], GIF_LONGEST_DELAY)]
    for image, duration in zip(images[1:], durations[1:], strict=True):
        difference = ImageChops.difference(kept[-1].convert("RGBA"), image.convert("RGBA"))
        same = difference.getbbox(alpha_only=False) is None
        if same and times[-1] + duration <= GIF_LONGEST_DELAY:
            times[-1] += duration
        elif same:
            times[-1] = GIF_LONGEST_DELAY
        else:
            kept.append(image)
            times.append(min(duration, GIF_LONGEST_DELAY))
    return kept, times


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
    if _ENGINE[0] == "vips" and _vips().takes(info, info.output):
        with contextlib.suppress(_vips().Unshared):  # read otherwise by libvips: Pillow renders it
            return info, cast("dict[Size, bytes]", _vips().render_allowlisted(data, sizes, info, limits))
    need = upload_need(info, sizes)
    if info.frames > 1 and info.output in ANIMATED:  # every size of every frame, then encoded
        shapes = [functools.partial(_resized, size=dims) for _, dims in targets]
        results = _shaped(data, limits, need, info, info.output, *shapes)
        return info, {
            size: encode_frames(frames, info.output)
            for (size, _), frames in zip(targets, results, strict=True)
        }
    # A still: each size encoded as soon as it is made, and only the last one kept to make the
    # next. With no sizes this decodes the whole image: an upload must still prove it decodes.
    [source] = _shaped(data, limits, need, info, info.output, lambda image: image)
    current = source.images.pop()  # the decoded image is freed once the first size is made
    rendered: dict[Size, bytes] = {}
    for size, dims in targets:
        current = _resized(current, dims)
        rendered[size] = encode_frames(Frames([current], [0]), info.output)
    return info, rendered


def _cover(image: Image.Image, info: Probe, box: Size) -> Image.Image:
    """Scale so the box is filled, then take the centre; never upscale. The crop is in the
    decoded image's coordinates (JPEG draft may have shrunk it already)."""
    scale = min(max(box.width / info.width, box.height / info.height), 1.0)
    out_w, out_h = min(box.width, info.width), min(box.height, info.height)
    factor = image.width / info.width
    # Never past the image: out / scale may land a hair beyond it (480.00000000000006 of 480),
    # and Pillow refuses a box outside the image.
    crop_w, crop_h = min(out_w / scale * factor, image.width), min(out_h / scale * factor, image.height)
    left, top = (image.width - crop_w) / 2, (image.height - crop_h) / 2
    return image.resize(
        (out_w, out_h), RESAMPLE, box=(left, top, left + crop_w, top + crop_h), reducing_gap=REDUCING_GAP
    )


@_untrusted
def render(data: bytes, variant: Variant, limits: Limits, info: Probe | None = None) -> tuple[bytes, Format]:
    """One on-demand variant: fit-in or cover-crop, in the asked (or the default) format.
    `info`: the probe of these very bytes, when admission has made it already."""
    info = info or probe(data, limits)
    fmt = variant.format or info.output
    if _ENGINE[0] == "vips" and _vips().takes(info, fmt):
        with contextlib.suppress(_vips().Unshared):  # read otherwise by libvips: Pillow renders it
            return cast("tuple[bytes, Format]", _vips().render(data, variant, info, limits))
    need = variant_need(info, variant)
    if variant.fit == "contain":
        shape: Shape = functools.partial(_resized, size=need)
    else:
        shape = functools.partial(_cover, info=info, box=variant.size)
    [shaped] = _shaped(data, limits, need, info, fmt, shape)
    return encode_frames(shaped, fmt), fmt
