"""Variants are sRGB: an original tagged with another RGB space (Display P3, Adobe RGB) or a
CMYK JPEG comes out with the colours it shows, not the numbers it stores; no variant carries a
profile but a greyscale one's. The profiles are made by the tests (ICC v2, matrix and curves)
and the expected colours computed apart from any colour engine."""

from __future__ import annotations

import io
from typing import cast

import pytest
import samples
from PIL import Image, ImageCms

from imageserver import imaging
from imageserver.imaging import Limits
from imageserver.variants import Format, Size, Variant

LIMITS = Limits()
# Both engines follow the colour rule (vips: the same LittleCMS transform on its result).
pytestmark = pytest.mark.usefixtures("engine")
P3 = samples.icc_profile("Display P3", samples.DISPLAY_P3_PRIMARIES, 2.2)
ADOBE = samples.icc_profile("Adobe RGB (1998)", samples.ADOBE_RGB_PRIMARIES, 563 / 256)
SPACES = {
    "display p3": (P3, samples.DISPLAY_P3_PRIMARIES, 2.2),
    "adobe rgb": (ADOBE, samples.ADOBE_RGB_PRIMARIES, 563 / 256),
}
# Colours inside sRGB's gamut from both spaces, yet far from where their numbers read as sRGB.
COLOURS = [(200, 120, 90), (120, 170, 60), (150, 100, 180)]


def flat(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def pixel(body: bytes) -> tuple[int, ...]:
    image = Image.open(io.BytesIO(body))
    value = image.convert("RGB").getpixel((image.width // 2, image.height // 2))
    assert isinstance(value, tuple)
    return value


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("colour", COLOURS)
@pytest.mark.parametrize(("source", "output"), [("PNG", "png"), ("JPEG", "png"), ("PNG", "webp")])
def test_a_wide_gamut_original_is_converted_to_srgb_and_untagged(
    space: str, colour: tuple[int, int, int], source: str, output: Format
) -> None:
    profile, primaries, gamma = SPACES[space]
    expected = samples.in_srgb(colour, primaries, gamma)
    assert all(2 <= v <= 253 for v in expected), expected  # inside both gamuts
    # The test can tell: read as if it were sRGB, the colour is off by more than the tolerance.
    assert max(abs(a - b) for a, b in zip(colour, expected, strict=True)) > 8
    options: dict[str, object] = {"quality": 95, "subsampling": 0} if source == "JPEG" else {}
    data = samples.encoded(flat(colour), source, icc_profile=profile, **options)
    body, _ = imaging.render(data, Variant(Size(32, 32), format=output), LIMITS)
    tolerance = 3 if source == "PNG" and output == "png" else 6  # lossy steps on top
    assert max(abs(a - b) for a, b in zip(pixel(body), expected, strict=True)) <= tolerance
    assert "icc_profile" not in Image.open(io.BytesIO(body)).info


def test_the_upload_renderings_are_converted_too() -> None:
    data = samples.encoded(flat((200, 120, 90), (600, 400)), "JPEG", quality=95, icc_profile=P3)
    _, rendered = imaging.render_allowlisted(data, [Size(300, 300), Size(100, 100)], LIMITS)
    expected = samples.in_srgb((200, 120, 90), samples.DISPLAY_P3_PRIMARIES, 2.2)
    for body in rendered.values():
        assert max(abs(a - b) for a, b in zip(pixel(body), expected, strict=True)) <= 6
        assert "icc_profile" not in Image.open(io.BytesIO(body)).info


def test_transparency_survives_the_conversion() -> None:
    image = flat((200, 120, 90), mode="RGB").convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize(image.size))
    body, _ = imaging.render(samples.encoded(image, "PNG", icc_profile=P3), Variant(Size(32, 32)), LIMITS)
    result = Image.open(io.BytesIO(body))
    assert result.mode == "RGBA"
    low, high = cast("tuple[int, int]", result.getchannel("A").getextrema())
    assert low < 20
    assert high > 230


def test_srgb_originals_keep_their_numbers_and_lose_the_profile() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = samples.encoded(flat((200, 120, 90)), "PNG", icc_profile=srgb)
    body, _ = imaging.render(data, Variant(Size(32, 32)), LIMITS)
    assert pixel(body) == (200, 120, 90)
    assert "icc_profile" not in Image.open(io.BytesIO(body)).info


def test_a_profile_is_judged_by_what_it_does_not_by_its_name() -> None:
    """Linear light with sRGB's primaries, named sRGB: converted all the same."""
    linear = samples.icc_profile("sRGB linear", samples.SRGB_PRIMARIES, 1.0)
    data = samples.encoded(flat((200, 60, 30)), "PNG", icc_profile=linear)
    body, _ = imaging.render(data, Variant(Size(32, 32)), LIMITS)
    expected = samples.in_srgb((200, 60, 30), samples.SRGB_PRIMARIES, 1.0)
    assert max(abs(a - b) for a, b in zip(pixel(body), expected, strict=True)) <= 3


def test_a_profile_nobody_can_read_is_dropped_not_a_failure() -> None:
    data = samples.encoded(flat((200, 120, 90)), "PNG", icc_profile=b"not a profile at all" * 10)
    body, _ = imaging.render(data, Variant(Size(32, 32)), LIMITS)
    assert pixel(body) == (200, 120, 90)
    assert "icc_profile" not in Image.open(io.BytesIO(body)).info


@pytest.mark.parametrize("output", ["jpeg", "png"])
def test_a_cmyk_jpeg_comes_out_rgb_with_its_colours(output: Format) -> None:
    red = Image.new("CMYK", (64, 48), (0, 255, 255, 0))  # no profile: Pillow's formula
    data = samples.encoded(red, "JPEG", quality=95)
    assert imaging.probe(data, LIMITS).mode == "CMYK"
    body, _ = imaging.render(data, Variant(Size(32, 32), format=output), LIMITS)
    assert Image.open(io.BytesIO(body)).mode == "RGB"
    assert max(abs(a - b) for a, b in zip(pixel(body), (255, 0, 0), strict=True)) <= 6


def test_greyscale_keeps_a_greyscale_profile_and_nothing_else() -> None:
    grey = samples.icc_profile("Grey gamma 1.8", None, 1.8)
    data = samples.encoded(flat((128, 128, 128)).convert("L"), "PNG", icc_profile=grey)
    body, _ = imaging.render(data, Variant(Size(32, 32)), LIMITS)
    assert Image.open(io.BytesIO(body)).info.get("icc_profile") == grey
    for stranger in (P3, b"\x00" * 4096):  # an RGB profile, or bytes that are no profile
        data = samples.encoded(flat((128, 128, 128)).convert("L"), "PNG", icc_profile=stranger)
        body, _ = imaging.render(data, Variant(Size(32, 32)), LIMITS)
        assert "icc_profile" not in Image.open(io.BytesIO(body)).info
        assert len(body) < 1024


def test_profiles_are_remembered_by_digest_and_a_huge_one_is_dropped() -> None:
    rules = imaging._ColourRules(capacity=2)
    assert rules.rule(P3, "RGB") is rules.rule(bytes(P3), "RGB")  # built once
    for profile in (ADOBE, P3, samples.icc_profile("Other", samples.ADOBE_RGB_PRIMARIES, 1.8)):
        rules.rule(profile, "RGB")
    assert len(rules._rules) == 2
    assert all(len(digest) == 32 for digest, _ in rules._rules)
    huge = P3 + b"\0" * imaging.MAX_PROFILE_BYTES
    assert rules.rule(huge, "RGB") is None
