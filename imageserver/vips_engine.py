"""The libvips rendering engine (`--engine vips`): the same variants as Pillow's, made by
libvips' shrink-on-load and streaming pipeline (pyvips, with the libvips of pyvips-binary).

It renders stills from JPEG, PNG, WebP and AVIF into JPEG, PNG, WebP or AVIF. Everything
else goes through Pillow, whichever engine is chosen (`takes`): animations and GIF (their
frames, delays and quantizer are Pillow's), HEIC (this libvips has no HEVC decoder), CMYK and
16-bit greyscale (Pillow's conversions are the rule the docs state).

What is shared with Pillow, so the engines differ only in their pixels: the probe and every
limit and admission price (the upload was already read by `imaging.probe`), the output
geometry (exact sizes from `fit_within` and `variant_need`, the crop centred), the EXIF
orientation applied, the colour rule (`imaging.COLOUR_RULES`: the same LittleCMS transform
is applied to the result), no metadata kept, and the encoder settings.

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
from imageserver.imaging import KEEP, Probe, Rejected
from imageserver.variants import Format, Size, Variant

SOURCES = frozenset({"jpeg", "png", "webp", "avif"})
OUTPUTS: frozenset[Format] = frozenset({"jpeg", "png", "webp", "avif"})
MODES = frozenset({"RGB", "RGBA", "L", "LA", "P", "PA", "1"})
# libvips' loader classes for SOURCES: every other loader stays blocked.
LOADERS = ("VipsForeignLoadJpeg", "VipsForeignLoadPng", "VipsForeignLoadWebp", "VipsForeignLoadHeif")
PIL_MODE = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}  # by band count, for the colour rule


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


def _loaded(data: bytes, size: tuple[int, int], info: Probe) -> Any:
    """The image at `size` exactly (displayed orientation), oriented by its EXIF tag, in 8 bits
    a channel. Decoded as small as still covers `size`: a JPEG at Pillow's 1/2, 1/4 or 1/8
    (the same decode as `imaging`, which the memory price assumes), a WebP scaled by libwebp
    while it decodes; then one Lanczos resize, libvips shrinking by whole factors first.
    Read sequentially, as it streams: a large PNG is never held whole, nor spilled to disk."""
    pyvips = _vips()
    options: dict[str, object] = {"fail_on": "truncated", "access": "sequential"}
    try:
        if info.format == "jpeg":
            image = pyvips.Image.jpegload_buffer(data, shrink=imaging.jpeg_shrink(info, size), **options)
        elif info.format == "webp":
            scale = min(max(size[0] / info.width, size[1] / info.height), 1.0)
            image = pyvips.Image.webpload_buffer(data, scale=scale, **options)
        else:
            image = pyvips.Image.new_from_buffer(data, "", **options)
        if image.get_typeof("orientation") and image.get("orientation") not in (0, 1):
            image = image.copy_memory().autorot()  # a turn reads out of order: held first
        if image.format != "uchar":  # a 16-bit PNG: Pillow reads 8 bits of it too
            image = image.colourspace("srgb" if image.bands >= 3 else "b-w")
        if (image.width, image.height) != size:
            image = image.resize(size[0] / image.width, vscale=size[1] / image.height, kernel="lanczos3")
        return image.copy_memory()
    except pyvips.Error as error:
        raise Rejected(400, f"cannot decode the image: {str(error).strip()}") from None


def _colour(image: Any) -> tuple[Any, bytes | None]:
    """The image in sRGB and no profile, or (greyscale) as it is and its profile: the rule of
    `imaging.in_srgb`, the conversion by the very same LittleCMS transform."""
    if image.get_typeof("icc-profile-data") == 0:
        return image, None
    profile = cast(bytes, image.get("icc-profile-data"))
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


def _encoded(image: Any, fmt: Format) -> bytes:
    """As `imaging.encode_frames` encodes a still: the same quality and effort, sRGB, no
    EXIF, XMP or comment; a greyscale image's own greyscale profile only."""
    image, profile = _colour(image)
    image = image.copy()  # metadata is set on a copy: the source may be encoded again
    for name in image.get_fields():
        if name.startswith(("exif", "xmp", "iptc", "icc-profile", "jpeg-comment", "png-comment")):
            image.remove(name)
    if profile is not None:
        image.set_type(_vips().GValue.blob_type, "icc-profile-data", profile)
    keep = "icc" if profile is not None else "none"
    if fmt == "jpeg":
        if image.hasalpha():
            image = image.flatten(background=[255] * (image.bands - 1))
        data = image.jpegsave_buffer(Q=85, keep=keep)
    elif fmt == "png":
        data = image.pngsave_buffer(compression=6, keep=keep)
    elif fmt == "avif":
        # Pillow's speed 8 is libvips' effort 1 (effort = 9 - speed), one thread as there.
        data = image.heifsave_buffer(compression="av1", Q=60, effort=1, keep=keep)
    else:
        data = image.webpsave_buffer(Q=80, effort=4, keep=keep)
    return cast(bytes, data)


def render(data: bytes, variant: Variant, info: Probe) -> tuple[bytes, Format]:
    fmt = variant.format or info.output
    need = imaging.variant_need(info, variant)
    image = _loaded(data, need, info)
    if variant.fit == "cover":
        out_w, out_h = min(variant.size.width, info.width), min(variant.size.height, info.height)
        image = image.crop((need[0] - out_w) // 2, (need[1] - out_h) // 2, out_w, out_h)
    return _encoded(image, fmt), fmt


def render_allowlisted(data: bytes, sizes: Iterable[Size], info: Probe) -> dict[Size, bytes]:
    """Decode once to the largest size, then each next size from the last, as Pillow does."""
    targets = sorted(
        {size: imaging.fit_within(info.width, info.height, size) for size in sizes}.items(),
        key=lambda item: item[1][0] * item[1][1],
        reverse=True,
    )
    # With no sizes this decodes the whole image: an upload must still prove it decodes.
    current = _loaded(data, targets[0][1] if targets else (info.width, info.height), info)
    rendered: dict[Size, bytes] = {}
    for size, dims in targets:
        if (current.width, current.height) != dims:
            scale = (dims[0] / current.width, dims[1] / current.height)
            current = current.resize(scale[0], vscale=scale[1], kernel="lanczos3").copy_memory()
        rendered[size] = _encoded(current, info.output)
    return rendered
