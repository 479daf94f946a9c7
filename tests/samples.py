"""Deterministic sample images for tests and benchmarks: photo-like content (smooth gradients
plus fine detail, so JPEG sizes and decode costs resemble real photos)."""

from __future__ import annotations

import io
import random
import statistics
import struct
import zlib

import pillow_heif
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFilter

pillow_heif.register_heif_opener()  # HEIC samples are made with Pillow's save


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = random.Random(seed)
    base = Image.linear_gradient("L").resize((width, height))
    red = base.rotate(rng.randrange(360), expand=False).resize((width, height))
    green = Image.radial_gradient("L").resize((width, height))
    blue = base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = Image.merge("RGB", (red, green, blue))
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(max(2, width // 40), max(3, width // 8))
        draw.ellipse(
            (x - r, y - r, x + r, y + r), fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256))
        )
    return Image.blend(
        image.filter(ImageFilter.GaussianBlur(2)), noise(width, height, rng).convert("RGB"), 0.12
    )


# Gaussian grey levels (mean 128, sigma 24) by the inverse CDF of 256 evenly spaced quantiles.
_NORMAL = statistics.NormalDist(128, 24)
_GAUSSIAN = [min(255, max(0, round(_NORMAL.inv_cdf((i + 0.5) / 256)))) for i in range(256)]


def noise(width: int, height: int, rng: random.Random) -> Image.Image:
    """Sensor-like noise as Image.effect_noise(size, 24) makes it, but drawn from the seed
    (effect_noise draws from C's rand(), so the same seed gave other bytes each time)."""
    return Image.frombytes("L", (width, height), rng.randbytes(width * height)).point(_GAUSSIAN)


def encoded(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def jpeg(width: int = 640, height: int = 480, seed: int = 0, quality: int = 90, **options: object) -> bytes:
    return encoded(photo(width, height, seed), "JPEG", quality=quality, **options)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height: a decompression bomb's calling card."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\0" * 64)
    idat_chunk = b"IDAT" + idat
    body += struct.pack(">I", len(idat)) + idat_chunk + struct.pack(">I", zlib.crc32(idat_chunk))
    return b"\x89PNG\r\n\x1a\n" + body


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Test Camera Maker"  # Make: metadata that variants must not carry
    return encoded(image, "JPEG", quality=90, exif=exif.tobytes())


# Frames of an animation: flat colours, so a variant's frame says which one it came from.
FRAME_COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (240, 200, 20), (120, 40, 160)]


def animation(
    width: int, height: int, fmt: str = "GIF", frames: int = 5, durations: list[int] | None = None
) -> bytes:
    """An animation that loops forever, each frame one colour of FRAME_COLOURS in turn."""
    images = [Image.new("RGB", (width, height), FRAME_COLOURS[i % len(FRAME_COLOURS)]) for i in range(frames)]
    durations = durations or [40 + 10 * i for i in range(frames)]
    options: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
    return encoded(
        images[0], fmt, save_all=True, append_images=images[1:], duration=durations, loop=0, **options
    )


# -- ICC profiles ----------------------------------------------------------------------------
# A display profile (ICC v2, matrix and gamma curves) of any RGB space: what a camera or phone
# embeds, made here from its primaries so the tests need no profile files.

D50 = (0.9642, 1.0, 0.8249)
D65_XY = (0.3127, 0.3290)
SRGB_PRIMARIES = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06))
DISPLAY_P3_PRIMARIES = ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060))
ADOBE_RGB_PRIMARIES = ((0.64, 0.33), (0.21, 0.71), (0.15, 0.06))
Matrix = list[list[float]]


def _solve(m: Matrix, v: list[float]) -> list[float]:
    """m x = v for a 3x3 m (Cramer's rule)."""

    def det(a: Matrix) -> float:
        return (
            a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
            - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
            + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])
        )

    d = det(m)
    return [det([[v[r] if c == k else m[r][c] for c in range(3)] for r in range(3)]) / d for k in range(3)]


def _mul(a: Matrix, b: Matrix) -> Matrix:
    return [[sum(a[r][k] * b[k][c] for k in range(3)) for c in range(3)] for r in range(3)]


def _inverse(m: Matrix) -> Matrix:
    columns = [_solve(m, [1.0 if r == c else 0.0 for r in range(3)]) for c in range(3)]
    return [[columns[c][r] for c in range(3)] for r in range(3)]


def rgb_to_xyz_d50(primaries: tuple[tuple[float, float], ...]) -> Matrix:
    """Linear RGB to XYZ under D50 (Bradford-adapted from D65), as an ICC profile holds it."""

    def xyz(x: float, y: float) -> list[float]:
        return [x / y, 1.0, (1 - x - y) / y]

    columns = [xyz(*p) for p in primaries]
    m = [[columns[c][r] for c in range(3)] for r in range(3)]
    scale = _solve(m, xyz(*D65_XY))
    d65 = [[m[r][c] * scale[c] for c in range(3)] for r in range(3)]
    bradford = [[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]]
    source = [sum(bradford[r][k] * w for k, w in enumerate(xyz(*D65_XY))) for r in range(3)]
    target = [sum(bradford[r][k] * w for k, w in enumerate(D50)) for r in range(3)]
    cones = [[target[r] / source[r] if r == c else 0.0 for c in range(3)] for r in range(3)]
    return _mul(_mul(_inverse(bradford), _mul(cones, bradford)), d65)


def icc_profile(name: str, primaries: tuple[tuple[float, float], ...] | None, gamma: float) -> bytes:
    """An ICC v2 display profile: RGB (colorants, white point, one gamma for each channel), or
    greyscale without primaries (white point and one gamma)."""

    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    def xyz_tag(values: list[float] | tuple[float, ...]) -> bytes:
        return b"XYZ \0\0\0\0" + b"".join(s15(v) for v in values)

    def padded(tag: bytes) -> bytes:
        return tag + b"\0" * (-len(tag) % 4)

    text = name.encode("ascii") + b"\0"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 8 + b"\0\0\0" + b"\0" * 67
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256))
    tags = [
        (b"desc", padded(desc)),
        (b"cprt", padded(b"text\0\0\0\0" + b"No copyright: made by a test\0")),
        (b"wtpt", xyz_tag(D50)),
    ]
    if primaries is None:
        tags.append((b"kTRC", padded(curve)))
    else:
        matrix = rgb_to_xyz_d50(primaries)
        tags += [
            (tag, xyz_tag([row[i] for row in matrix])) for i, tag in enumerate((b"rXYZ", b"gXYZ", b"bXYZ"))
        ]
        tags += [(tag, padded(curve)) for tag in (b"rTRC", b"gTRC", b"bTRC")]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (
        struct.pack(">I", size)
        + b"\0\0\0\0"
        + bytes([2, 0x10, 0, 0])
        + b"mntr"
        + (b"GRAY" if primaries is None else b"RGB ")
        + b"XYZ "
        + struct.pack(">6H", 2026, 1, 1, 0, 0, 0)
        + b"acsp"
        + b"\0" * 24
        + b"\0" * 4
        + b"".join(s15(v) for v in D50)
        + b"\0" * 4
        + b"\0" * 16
        + b"\0" * 28
    )
    assert len(header) == 128, len(header)
    return header + struct.pack(">I", len(tags)) + table + data


def srgb_encoded(linear: float) -> float:
    """The sRGB transfer curve, 0..1 linear light to 0..1 signal."""
    linear = min(1.0, max(0.0, linear))
    return 12.92 * linear if linear <= 0.0031308 else 1.055 * linear ** (1 / 2.4) - 0.055


def in_srgb(
    rgb: tuple[int, int, int], primaries: tuple[tuple[float, float], ...], gamma: float
) -> list[float]:
    """What an 8-bit colour of a gamma/primaries space is in sRGB, computed apart from any CMM
    (0..255, unrounded and unclipped, so a test can pick colours inside both gamuts)."""
    linear = [(v / 255) ** gamma for v in rgb]
    xyz = [sum(row[k] * linear[k] for k in range(3)) for row in rgb_to_xyz_d50(primaries)]
    back = _inverse(rgb_to_xyz_d50(SRGB_PRIMARIES))
    srgb_linear = [sum(row[k] * xyz[k] for k in range(3)) for row in back]
    return [255 * (srgb_encoded(v) if 0 <= v <= 1 else v) for v in srgb_linear]


def damaged(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """One of `seeds`, maybe cut short past its first 12 bytes, with up to 16 bytes changed:
    what a fuzz of a decoder feeds it."""

    @st.composite
    def strategy(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        if draw(st.booleans()):
            del data[draw(st.integers(12, len(data) - 1)) :]
        for _ in range(draw(st.integers(0, 16))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)

    return strategy()
