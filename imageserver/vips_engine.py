"""The libvips rendering engine (`--engine vips`): the same variants as Pillow's, made by
libvips' shrink-on-load and streaming pipeline (pyvips, with the libvips of pyvips-binary).

It renders stills from JPEG, PNG and WebP into JPEG, PNG, WebP or AVIF. Everything else goes
through Pillow, whichever engine is chosen (`takes`): animations and GIF (their frames,
delays and quantizer are Pillow's), HEIC (this libvips has no HEVC decoder), AVIF sources
(libheif applies a clean-aperture crop Pillow does not, and holds more than the memory price
of a 10- or 12-bit or 4:4:4 AVIF), CMYK and 16-bit greyscale (Pillow's conversions are the
rule the docs state).

What Pillow read of the header rules, so the engines differ only in their pixels: the probe
and every limit and admission price, the EXIF orientation and the ICC profile (libvips reads
a broken EXIF block, a second eXIf or iCCP chunk, or a JPEG profile whose pieces do not add
up, otherwise than Pillow). A file libvips would read otherwise still is not libvips' to
render (`Unshared`), and Pillow renders it: one it decodes to another size than Pillow's
header says, and an RGB or grey PNG with colour-key transparency (an alpha to libvips;
Pillow honours it or not by output format). Shared too: the output geometry (exact sizes
from `fit_within` and `variant_need`, the crop centred), the colour rule
(`imaging.COLOUR_RULES`: the same LittleCMS transform on the result), no metadata kept, the
encoder settings.

libvips is locked down before its first use: only the loaders named here may run (SVG, TIFF,
matrix and the rest refuse), one thread a render (the render pool is the parallelism), and no
operation cache (it would keep users' pixels alive between requests).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, cast

from PIL import Image, ImageCms

from imageserver import imaging
from imageserver.imaging import KEEP, Limits, Probe, Rejected
from imageserver.variants import Format, Size, Variant

SOURCES = frozenset({"jpeg", "png", "webp"})
OUTPUTS: frozenset[Format] = frozenset({"jpeg", "png", "webp", "avif"})
MODES = frozenset({"RGB", "RGBA", "L", "LA", "P", "PA", "1"})
# libvips' loader classes for SOURCES: every other loader stays blocked.
LOADERS = ("VipsForeignLoadJpeg", "VipsForeignLoadPng", "VipsForeignLoadWebp")
# Pillow's EXIF orientation -> the libvips operations that show it upright (imaging.TURNS).
TURNS: dict[int, tuple[str, ...]] = {
    2: ("fliphor",),
    3: ("rot180",),
    4: ("flipver",),
    5: ("rot90", "fliphor"),
    6: ("rot90",),
    7: ("rot270", "fliphor"),
    8: ("rot270",),
}
PIL_MODE = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}  # by band count, for the colour rule


class Unshared(Exception):
    """libvips reads this file otherwise than Pillow's header: Pillow renders it."""


@functools.cache
def _vips() -> Any:
    """pyvips, configured once; imported by the first render, not at start-up (a Pillow
    deployment never pays for libvips)."""
    import pyvips  # noqa: PLC0415

    pyvips.cache_set_max(0)
    pyvips.cache_set_max_mem(0)
    pyvips.cache_set_max_files(0)
    pyvips.concurrency_set(1)
    pyvips.operation_block_set("VipsForeignLoad", True)
    for loader in LOADERS:
        pyvips.operation_block_set(loader, False)
    return pyvips


def versions() -> str:
    """What makes this engine's bytes besides the code: the libvips it links."""
    pyvips = _vips()
    return f"pyvips {pyvips.__version__} libvips {pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}"


def takes(info: Probe, output: Format) -> bool:
    """Whether this engine renders `info` as `output`; if not, Pillow does."""
    return info.format in SOURCES and output in OUTPUTS and info.frames == 1 and info.mode in MODES


def _header(data: bytes, limits: Limits) -> imaging.Header:
    read = imaging.header(data, limits)
    if read.colour_key:  # libvips makes it an alpha; Pillow ignores it, or not, by format
        raise Unshared("colour-key transparency")
    return read


def _loaded(data: bytes, size: tuple[int, int], info: Probe, orientation: int) -> Any:
    """The image at `size` exactly (displayed orientation), turned as Pillow read its EXIF
    orientation, in 8 bits a channel, without libvips' own reading of its metadata. Decoded
    as small as still covers `size`: a JPEG at Pillow's 1/2, 1/4 or 1/8 (the same decode as
    `imaging`, which the memory price assumes), a WebP scaled by libwebp while it decodes;
    then one Lanczos resize, libvips shrinking by whole factors first. Read sequentially, as
    it streams: a large PNG is never held whole, nor spilled to disk."""
    pyvips = _vips()
    options: dict[str, object] = {"fail_on": "truncated", "access": "sequential"}
    turned = orientation in imaging.TRANSPOSED
    stored = (info.height, info.width) if turned else (info.width, info.height)
    try:
        if info.format == "jpeg":
            shrink = imaging.jpeg_shrink(info, size)
            image = pyvips.Image.jpegload_buffer(data, shrink=shrink, **options)
            expected = (-(-stored[0] // shrink), -(-stored[1] // shrink))
        elif info.format == "webp":
            scale = min(max(size[0] / info.width, size[1] / info.height), 1.0)
            image = pyvips.Image.webpload_buffer(data, scale=scale, **options)
            expected = (round(stored[0] * scale), round(stored[1] * scale))
        else:
            image = pyvips.Image.new_from_buffer(data, "", **options)
            expected = stored
        if abs(image.width - expected[0]) > 1 or abs(image.height - expected[1]) > 1:
            raise Unshared(f"libvips decodes {image.width}x{image.height}, Pillow's header {stored}")
        image = _without_metadata(image)  # Pillow's reading of it rules, not libvips'
        if orientation in TURNS:
            image = image.copy_memory()  # a turn reads out of order: held first
            for operation in TURNS[orientation]:
                image = getattr(image, operation)()
        if image.format != "uchar":  # a 16-bit PNG: Pillow reads 8 bits of it too
            image = image.colourspace("srgb" if image.bands >= 3 else "b-w")
        if (image.width, image.height) != size:
            image = _resized(image, size)
        return image.copy_memory()
    except pyvips.Error as error:
        raise Rejected(400, f"cannot decode the image: {str(error).strip()}") from None


def _resized(image: Any, size: tuple[int, int]) -> Any:
    """Lanczos to `size` exactly; with alpha, premultiplied (as Pillow does), or the colour
    under clear pixels bleeds into the edges (a white disc on clear black got a grey rim)."""
    scale = (size[0] / image.width, size[1] / image.height)
    if not image.hasalpha():
        return image.resize(scale[0], vscale=scale[1], kernel="lanczos3")
    premultiplied = image.premultiply().resize(scale[0], vscale=scale[1], kernel="lanczos3")
    return premultiplied.unpremultiply().cast("uchar")


def _without_metadata(image: Any) -> Any:
    """A copy with none of what libvips read of the file's metadata: EXIF, XMP, IPTC, the
    profile, comments, the orientation. Nothing of it may reach a variant, and what Pillow
    read of it is what rules."""
    image = image.copy(xres=1.0, yres=1.0)  # the source's resolution, which PNG output keeps
    for name in image.get_fields():
        if name.startswith(
            ("exif", "xmp", "iptc", "icc-profile", "jpeg-comment", "png-comment", "orientation")
        ):
            image.remove(name)
    return image


def _colour(image: Any, profile: bytes | None) -> tuple[Any, bytes | None]:
    """The image in sRGB and no profile, or (greyscale) as it is and its profile: the rule of
    `imaging.in_srgb` for the profile Pillow read, the conversion by the same LittleCMS
    transform."""
    if not profile:
        return image, None
    mode = PIL_MODE[image.bands]
    rule = imaging.COLOUR_RULES.rule(profile, mode)
    if rule is None:
        return image, None
    if isinstance(rule, str):
        assert rule == KEEP
        return image, profile
    pixels = Image.frombuffer(mode, (image.width, image.height), image.write_to_memory(), "raw", mode, 0, 1)
    converted = ImageCms.applyTransform(pixels, rule)
    assert converted is not None  # not in place
    pyvips = _vips()
    out = pyvips.Image.new_from_memory(converted.tobytes(), image.width, image.height, image.bands, "uchar")
    return out.copy(interpretation="srgb"), None


def _encoded(image: Any, fmt: Format, profile: bytes | None) -> bytes:
    """As `imaging.encode_frames` encodes a still: the same quality and effort, sRGB, no
    EXIF, XMP or comment; a greyscale image's own greyscale profile only."""
    image, profile = _colour(image, profile)
    if profile is not None:
        image = image.copy()  # metadata is set on a copy: the source may be encoded again
        image.set_type(_vips().GValue.blob_type, "icc-profile-data", profile)
    keep = "icc" if profile is not None else "none"
    if fmt == "jpeg":
        if image.hasalpha():  # on white, in colour (Pillow's RGB), as Pillow does
            image = image.flatten(background=[255] * (image.bands - 1))
            image = image.colourspace("srgb") if image.bands == 1 else image
        data = image.jpegsave_buffer(Q=85, keep=keep)
    elif fmt == "png":
        data = image.pngsave_buffer(compression=6, keep=keep)
    elif fmt == "avif":
        # Pillow's speed 8 is libvips' effort 1 (effort = 9 - speed), one thread as there.
        data = image.heifsave_buffer(compression="av1", Q=60, effort=1, keep=keep)
    else:
        data = image.webpsave_buffer(Q=80, effort=4, keep=keep)
    return cast(bytes, data)


def render(data: bytes, variant: Variant, info: Probe, limits: Limits) -> tuple[bytes, Format]:
    fmt = variant.format or info.output
    need = imaging.variant_need(info, variant)
    read = _header(data, limits)
    image = _loaded(data, need, info, read.orientation)
    if variant.fit == "cover":
        out_w, out_h = min(variant.size.width, info.width), min(variant.size.height, info.height)
        # Rounded up, as Pillow's crop box (an odd excess starts it half a pixel further).
        image = image.crop((need[0] - out_w + 1) // 2, (need[1] - out_h + 1) // 2, out_w, out_h)
    return _encoded(image, fmt, read.profile), fmt


def render_allowlisted(data: bytes, sizes: Iterable[Size], info: Probe, limits: Limits) -> dict[Size, bytes]:
    """Decode once to the largest size, then each next size from the last, as Pillow does."""
    targets = sorted(
        {size: imaging.fit_within(info.width, info.height, size) for size in sizes}.items(),
        key=lambda item: item[1][0] * item[1][1],
        reverse=True,
    )
    read = _header(data, limits)
    # With no sizes this decodes the whole image: an upload must still prove it decodes.
    current = _loaded(data, targets[0][1] if targets else (info.width, info.height), info, read.orientation)
    rendered: dict[Size, bytes] = {}
    for size, dims in targets:
        if (current.width, current.height) != dims:
            current = _resized(current, dims).copy_memory()
        rendered[size] = _encoded(current, info.output, read.profile)
    return rendered
