"""Limits before decode, format sniffing, orientation, metadata stripping, variant sizes."""

from __future__ import annotations

import io

import pytest
import samples
from PIL import Image

from imageserver import imaging, vips_engine
from imageserver.imaging import Limits, Rejected
from imageserver.variants import Size, Variant

LIMITS = Limits(max_bytes=10 << 20, max_pixels=40_000_000)
# Both engines keep every promise here (the geometry, orientation and limits of `--engine`).
pytestmark = pytest.mark.usefixtures("engine")


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_format_comes_from_the_bytes_not_the_name() -> None:
    assert imaging.sniff(samples.jpeg(32, 32)) == "jpeg"
    assert imaging.sniff(samples.encoded(samples.photo(8, 8), "PNG")) == "png"
    assert imaging.sniff(samples.encoded(samples.photo(8, 8), "WEBP")) == "webp"
    assert imaging.sniff(b"GIF89a....") == "gif"
    assert imaging.sniff(b"GIF89") is None
    assert imaging.sniff(b"<html>") is None


def test_too_many_pixels_is_refused_from_the_header_before_any_decode() -> None:
    bomb = samples.png_header_only(100_000, 100_000)
    assert len(bomb) < 200
    with pytest.raises(Rejected) as refused:
        imaging.render_allowlisted(bomb, [Size(300, 300)], LIMITS)
    assert refused.value.status == 413
    assert "pixels" in refused.value.message


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_truncated_images_are_a_client_error(cut: float) -> None:
    data = samples.jpeg(400, 300)
    with pytest.raises(Rejected) as refused:
        imaging.render_allowlisted(data[: int(len(data) * cut)], [Size(300, 300)], LIMITS)
    assert refused.value.status == 400


def test_not_an_image_is_415() -> None:
    with pytest.raises(Rejected) as refused:
        imaging.probe(b"%PDF-1.7 not an image", LIMITS)
    assert refused.value.status == 415


def test_allowlisted_variants_fit_in_their_box_and_never_upscale() -> None:
    data = samples.jpeg(3000, 2000)
    info, rendered = imaging.render_allowlisted(
        data, [Size(300, 300), Size(1200, 1200), Size(4000, 4000)], LIMITS
    )
    assert (info.format, info.width, info.height) == ("jpeg", 3000, 2000)
    assert opened(rendered[Size(300, 300)]).size == (300, 200)
    assert opened(rendered[Size(1200, 1200)]).size == (1200, 800)
    assert opened(rendered[Size(4000, 4000)]).size == (3000, 2000)


def test_exif_orientation_is_applied_and_metadata_is_stripped() -> None:
    # Stored 400x200, orientation 6 (rotate 90° clockwise): displayed 200x400.
    data = samples.with_orientation(samples.photo(400, 200), 6)
    assert opened(data).getexif().get(0x010F) == "Test Camera Maker"
    info, rendered = imaging.render_allowlisted(data, [Size(100, 100)], LIMITS)
    assert (info.width, info.height) == (200, 400)
    variant = opened(rendered[Size(100, 100)])
    assert variant.size == (50, 100)
    assert not variant.getexif()
    assert "exif" not in variant.info


def test_on_demand_cover_crops_to_exactly_the_box_in_the_asked_format() -> None:
    data = samples.jpeg(3000, 2000)
    body, fmt = imaging.render(data, Variant(Size(300, 300), "cover", "webp"), LIMITS)
    assert fmt == "webp"
    assert opened(body).size == (300, 300)
    body, fmt = imaging.render(data, Variant(Size(300, 200)), LIMITS)
    assert (fmt, opened(body).size) == ("jpeg", (300, 200))


def test_transparent_png_becomes_a_jpeg_on_white() -> None:
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    body, _ = imaging.render(samples.encoded(clear, "PNG"), Variant(Size(32, 32), format="jpeg"), LIMITS)
    pixel = opened(body).convert("RGB").getpixel((16, 16))
    assert isinstance(pixel, tuple)
    assert min(pixel) > 245


def test_whatever_pillow_still_raises_about_an_image_is_a_client_error(
    monkeypatch: pytest.MonkeyPatch, engine: imaging.Engine
) -> None:
    def choke(*_args: object, **_kwargs: object) -> bytes:
        raise OSError("cannot write mode I;16 as JPEG")

    if engine == "vips":
        monkeypatch.setattr(vips_engine, "_encoded", choke)
    else:
        monkeypatch.setattr(imaging, "encode_frames", choke)
    with pytest.raises(Rejected) as refused:
        imaging.render(samples.jpeg(64, 48), Variant(Size(32, 32)), LIMITS)
    assert refused.value.status == 422
    assert "cannot process this image: cannot write mode I;16 as JPEG" in refused.value.message
