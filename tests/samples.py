"""Deterministic sample images for tests and benchmarks: photo-like content (smooth gradients
plus fine detail, so JPEG sizes and decode costs resemble real photos)."""

from __future__ import annotations

import io
import random
import statistics
import struct
import zlib

from PIL import Image, ImageDraw, ImageFilter


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
