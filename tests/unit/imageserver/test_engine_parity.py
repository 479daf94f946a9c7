"""`--engine vips` makes the variants `--engine pillow` makes: the same size, the same crop,
the same orientation, colours within a few levels, no metadata; and it is libvips that made
them (the cases it takes), while everything it does not take still renders, through Pillow.

Golden comparison: each variant from both engines, reduced to 16x16 (so resampling noise
averages out while a crop off by a few pixels, a turn or a colour shift does not) and
compared level by level."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import cast

import pytest
import samples
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageCms, ImageDraw, ImageStat

from imageserver import imaging, variants, vips_engine
from imageserver.imaging import Limits, Rejected
from imageserver.variants import Format, Size, Variant

LIMITS = Limits()
# Reduced to 16x16, the engines differ by at most these levels (lossy outputs by their codecs).
TOLERANCE: dict[Format, int] = {"png": 4, "jpeg": 12, "webp": 8, "avif": 8}
MEAN_TOLERANCE = 2.5


@pytest.fixture
def vips_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int]]]:
    """The sizes libvips decoded to, in order."""
    calls: list[tuple[int, int]] = []
    loaded = vips_engine._loaded

    def counted(data: bytes, size: tuple[int, int], info: imaging.Probe, orientation: int) -> object:
        calls.append(size)
        return loaded(data, size, info, orientation)

    monkeypatch.setattr(vips_engine, "_loaded", counted)
    yield calls
    imaging.use_engine("pillow")


def both(render: Callable[[], bytes]) -> tuple[Image.Image, Image.Image]:
    images = []
    for engine in imaging.ENGINES:
        imaging.use_engine(engine)
        images.append(Image.open(io.BytesIO(render())))
    imaging.use_engine("pillow")
    return images[0], images[1]


def assert_alike(pillow: Image.Image, vips: Image.Image, fmt: Format) -> None:
    assert vips.size == pillow.size
    assert vips.format == pillow.format
    assert vips.mode == pillow.mode or {vips.mode, pillow.mode} <= {"RGB", "RGBA"}
    for name in ("exif", "icc_profile", "xmp", "comment"):
        assert name not in vips.info, name
    # Band by band: Pillow would premultiply an RGBA image again to reduce it.
    bands = [
        [band.resize((16, 16), Image.Resampling.BOX) for band in _seen(image)] for image in (pillow, vips)
    ]
    differences = [ImageChops.difference(a, b) for a, b in zip(*bands, strict=True)]
    worst = max(cast("tuple[int, int]", difference.getextrema())[1] for difference in differences)
    mean = sum(ImageStat.Stat(difference).mean[0] for difference in differences) / len(differences)
    assert worst <= TOLERANCE[fmt] and mean <= MEAN_TOLERANCE, (worst, mean)


def _seen(image: Image.Image) -> list[Image.Image]:
    """Colours weighed by their alpha (premultiplied), and the alpha: what shows on any
    background. Under a nearly clear pixel the colour is anyone's (AVIF's 3 % opaque pixels
    differ by 32 levels, which is one level on the screen)."""
    if "A" not in image.getbands():
        return list(image.convert("RGB").split())
    rgba = image.convert("RGBA")
    return list(Image.frombytes("RGBA", rgba.size, rgba.convert("RGBa").tobytes()).split())


def source(kind: str) -> bytes:
    photo = samples.photo(900, 600, seed=3)
    if kind == "jpeg":
        return samples.encoded(photo, "JPEG", quality=92)
    if kind == "png":
        return samples.encoded(photo, "PNG")
    if kind == "png-alpha":
        rgba = photo.convert("RGBA")
        rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
        return samples.encoded(rgba, "PNG")
    if kind == "png-palette":
        return samples.encoded(photo.quantize(64), "PNG")
    if kind == "png-grey":
        return samples.encoded(photo.convert("L"), "PNG")
    return samples.encoded(photo, "WEBP", quality=95)


KINDS = ["jpeg", "png", "png-alpha", "png-palette", "png-grey", "webp"]
VARIANTS = [
    Variant(Size(300, 300)),
    Variant(Size(300, 200), "cover"),
    Variant(Size(200, 300), "cover"),
    Variant(Size(2000, 100), "cover"),  # wider than the original: cropped, never upscaled
    Variant(Size(1200, 1200)),  # larger than the original: its own size
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_on_demand_variants_match_pillows(kind: str, variant: Variant, vips_calls: list[object]) -> None:
    data = source(kind)
    pillow, vips = both(lambda: imaging.render(data, variant, LIMITS)[0])
    assert vips_calls, "libvips did not render it"
    fmt = imaging.probe(data, LIMITS).output
    assert_alike(pillow, vips, fmt)
    if variant.fit == "cover" and kind == "jpeg":  # the tolerance tells crop boxes apart
        shift = max(pillow.width, pillow.height) // 20
        off = pillow.crop((shift, 0, pillow.width, pillow.height)).resize(pillow.size)
        with pytest.raises(AssertionError):
            assert_alike(off, vips, fmt)


@pytest.mark.parametrize("output", ["jpeg", "png", "webp", "avif"])
def test_each_output_format_matches_pillows(output: Format, vips_calls: list[object]) -> None:
    data = source("png-alpha")
    variant = Variant(Size(300, 200), "cover", output)
    pillow, vips = both(lambda: imaging.render(data, variant, LIMITS)[0])
    assert vips_calls
    assert_alike(pillow, vips, output)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillows(orientation: int, vips_calls: list[object]) -> None:
    data = samples.with_orientation(samples.photo(400, 200, seed=5), orientation)
    for variant in (Variant(Size(100, 100)), Variant(Size(90, 60), "cover")):
        pillow, vips = both(lambda: imaging.render(data, variant, LIMITS)[0])  # noqa: B023
        assert_alike(pillow, vips, "jpeg")
        # The tolerance tells orientations apart: Pillow's variant turned the other way fails.
        for wrong in (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM):
            with pytest.raises(AssertionError):
                assert_alike(pillow.transpose(wrong), vips, "jpeg")
    assert len(vips_calls) == 2


def test_upload_renderings_match_pillows_each_from_one_decode(vips_calls: list[object]) -> None:
    data = source("jpeg")
    sizes = [Size(100, 100), Size(300, 300), Size(4000, 4000)]
    results = []
    for engine in imaging.ENGINES:
        imaging.use_engine(engine)
        _, rendered = imaging.render_allowlisted(data, sizes, LIMITS)
        results.append({size: Image.open(io.BytesIO(body)) for size, body in rendered.items()})
    assert vips_calls == [(900, 600)]  # decoded once, the largest first
    assert results[1][Size(4000, 4000)].size == (900, 600)
    for size in sizes:
        assert_alike(results[0][size], results[1][size], "jpeg")


def test_what_libvips_does_not_take_pillow_renders(vips_calls: list[object]) -> None:
    imaging.use_engine("vips")
    cmyk = samples.encoded(samples.photo(64, 48).convert("CMYK"), "JPEG")
    cases: list[tuple[bytes, Variant]] = [
        (samples.animation(64, 48, "GIF"), Variant(Size(32, 32))),  # GIF
        (samples.animation(64, 48, "WEBP"), Variant(Size(32, 32))),  # an animation
        (samples.encoded(samples.photo(64, 48), "PNG"), Variant(Size(32, 32), format="gif")),
        (cmyk, Variant(Size(32, 32))),
        # Colour-key transparency: an alpha to libvips; Pillow honours it or not by format.
        (
            samples.encoded(Image.new("RGB", (64, 48), (9, 9, 9)), "PNG", transparency=(9, 9, 9)),
            Variant(Size(32, 32)),
        ),
        (
            samples.encoded(Image.new("L", (64, 48), 7), "PNG", transparency=7),
            Variant(Size(32, 32), format="webp"),
        ),
        # libheif would apply a clean-aperture crop Pillow does not, and hold past the price
        (samples.encoded(samples.photo(64, 48), "AVIF"), Variant(Size(32, 32))),
    ]
    for data, variant in cases:
        body, _ = imaging.render(data, variant, LIMITS)
        assert Image.open(io.BytesIO(body)).size[0] <= 32
    assert vips_calls == []


# What libvips parses: each of its four formats, small, with and without alpha and orientation.
SEEDS = [
    samples.encoded(samples.photo(48, 32, 1), "JPEG", quality=80),
    samples.with_orientation(samples.photo(48, 32, 2), 6),
    samples.encoded(samples.photo(48, 32, 3).convert("RGBA"), "PNG"),
    samples.encoded(samples.photo(48, 32, 4).quantize(16), "PNG"),
    samples.encoded(samples.photo(48, 32, 5), "WEBP", quality=80),
]


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data", "ignore:Truncated File Read")
@settings(max_examples=300, deadline=None)
@given(data=samples.damaged(SEEDS), output=st.sampled_from([None, "jpeg", "png", "webp", "avif"]))
def test_damaged_files_are_refused_by_libvips_with_a_4xx_or_rendered(
    data: bytes, output: Format | None
) -> None:
    imaging.use_engine("vips")
    try:
        imaging.render_allowlisted(data, [Size(30, 30)], LIMITS)
        imaging.render(data, Variant(Size(20, 20), "cover", output), LIMITS)
    except Rejected as refused:
        assert 400 <= refused.status < 500
    finally:
        imaging.use_engine("pillow")


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_a_truncated_image_is_a_client_error_for_libvips_too(cut: float, vips_calls: list[object]) -> None:
    imaging.use_engine("vips")
    data = source("png")
    with pytest.raises(Rejected) as refused:
        imaging.render(data[: int(len(data) * cut)], Variant(Size(300, 300)), LIMITS)
    assert refused.value.status == 400
    assert vips_calls


def test_libvips_reads_only_the_formats_it_is_given() -> None:
    """Defence in depth behind the sniffing: libvips' other loaders (SVG, TIFF, its own
    formats) are blocked, so bytes that reached it by some path could not pick a parser."""
    pyvips = vips_engine._vips()
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"></svg>'
    tiff = samples.encoded(samples.photo(8, 8), "TIFF")
    for blocked in (svg, tiff):
        with pytest.raises(pyvips.Error):
            pyvips.Image.new_from_buffer(blocked, "").avg()
    assert pyvips.Image.new_from_buffer(samples.jpeg(8, 8), "").avg() > 0


def test_each_engine_names_its_variants_apart() -> None:
    """A variant rendered by libvips never passes for Pillow's (nor the other way round)
    in a cache, a storage node or a browser's ETag."""
    tags = []
    for engine in imaging.ENGINES:
        imaging.use_engine(engine)
        tags.append(variants.renderer())
    imaging.use_engine("pillow")
    assert tags[0] != tags[1]
    assert tags[0] == variants.renderer()


# -- what Pillow read of the header rules, not libvips' own reading of it -------------------


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _before_idat(png: bytes, *chunks: bytes) -> bytes:
    at = png.index(b"IDAT") - 4
    return png[:at] + b"".join(chunks) + png[at:]


def _circle() -> Image.Image:
    """A red circle on white, off-centre: a turn, a stretch or a crop shows."""
    image = Image.new("RGB", (400, 200), "white")
    ImageDraw.Draw(image).ellipse((150, 50, 250, 150), fill="red")
    return image


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()[6:]  # without the "Exif\0\0" of a JPEG's APP1


ADOBE = samples.icc_profile("Adobe RGB (1998)", samples.ADOBE_RGB_PRIMARIES, 563 / 256)
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _icc_segment(sequence: int, count: int, body: bytes) -> bytes:
    payload = b"ICC_PROFILE\0" + bytes([sequence, count]) + body
    return b"\xff\xe2" + struct.pack(">H", len(payload) + 2) + payload


def _iccp(profile: bytes) -> bytes:
    return _chunk(b"iCCP", b"icc\0\0" + zlib.compress(profile))


def _broken_exif_jpeg() -> bytes:
    """Make, then a Model whose data lies past the block, then Orientation 6: Pillow stops at
    the bad tag (orientation 1), libvips reads on (6). Common in real cameras' files."""
    tiff = bytes.fromhex(
        "4d4d002a000000080003010f00020000000443616d000110000200000006000000f801120003000000010006000000000000"
    )
    exif = b"Exif\0\0" + tiff
    raw = samples.encoded(_circle(), "JPEG", quality=95)
    return raw[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + raw[2:]


def _flat(colour: tuple[int, int, int], fmt: str, **options: object) -> bytes:
    return samples.encoded(Image.new("RGB", (300, 200), colour), fmt, **options)


def _with_app2(segments: bytes) -> bytes:
    raw = _flat((30, 200, 60), "JPEG", quality=95)
    return raw[:2] + segments + raw[2:]


HEADERS = {
    "broken EXIF": _broken_exif_jpeg(),
    "two eXIf chunks, 1 then 6": _before_idat(
        samples.encoded(_circle(), "PNG"), _chunk(b"eXIf", _exif(1)), _chunk(b"eXIf", _exif(6))
    ),
    "two eXIf chunks, 6 then 1": _before_idat(
        samples.encoded(_circle(), "PNG"), _chunk(b"eXIf", _exif(6)), _chunk(b"eXIf", _exif(1))
    ),
    # An APP2 profile whose pieces do not add up: Pillow drops it, libvips joined them.
    "ICC piece 1 of 2, alone": _with_app2(_icc_segment(1, 2, ADOBE)),
    "ICC piece 1 twice": _with_app2(_icc_segment(1, 1, ADOBE) * 2),
    # Two iCCP chunks: Pillow takes the last, libvips the first.
    "sRGB then Adobe iCCP": _before_idat(_flat((30, 200, 60), "PNG"), _iccp(SRGB), _iccp(ADOBE)),
    "Adobe then sRGB iCCP": _before_idat(_flat((30, 200, 60), "PNG"), _iccp(ADOBE), _iccp(SRGB)),
}


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data", "ignore:Truncated File Read")  # Pillow's, on purpose
@pytest.mark.parametrize("name", HEADERS)
@pytest.mark.parametrize("output", [None, "jpeg", "webp"])
def test_what_pillow_read_of_the_header_rules_in_libvips_too(
    name: str, output: Format | None, vips_calls: list[object]
) -> None:
    """Found by attacking the engine: where libvips reads a file's metadata otherwise than
    Pillow (a broken EXIF block, a second eXIf or iCCP chunk, profile pieces that do not add
    up), its variant was turned, stretched or coloured otherwise."""
    data = HEADERS[name]
    variant = Variant(Size(150, 150), format=output)
    pillow, vips = both(lambda: imaging.render(data, variant, LIMITS)[0])
    assert vips_calls
    assert_alike(pillow, vips, output or imaging.probe(data, LIMITS).output)


def test_grey_with_alpha_becomes_a_colour_jpeg_as_in_pillow(vips_calls: list[object]) -> None:
    grey = samples.photo(300, 200).convert("LA")
    data = samples.encoded(grey, "PNG")
    pillow, vips = both(lambda: imaging.render(data, Variant(Size(150, 150), format="jpeg"), LIMITS)[0])
    assert vips_calls
    assert pillow.mode == vips.mode == "RGB"
    assert_alike(pillow, vips, "jpeg")


@pytest.mark.parametrize(("size", "box"), [((640, 480), (256, 276)), ((640, 480), (164, 262))])
def test_a_cover_whose_crop_rounds_past_the_image_renders_in_both(
    size: tuple[int, int], box: tuple[int, int], vips_calls: list[object]
) -> None:
    """Found by attacking the engine, in Pillow's: 276 / 0.575 is 480.00000000000006 rows of
    a 480-row image, and Pillow refused the box (a 422 for a valid request)."""
    data = samples.encoded(samples.photo(*size), "PNG")
    variant = Variant(Size(*box), "cover")
    pillow, vips = both(lambda: imaging.render(data, variant, LIMITS)[0])
    assert pillow.size == vips.size == box
    assert_alike(pillow, vips, "png")


def test_a_file_libvips_reads_at_another_size_is_rendered_by_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    def unshared(*_args: object) -> object:
        raise vips_engine.Unshared("libvips decodes 150x100, Pillow's header (300, 200)")

    monkeypatch.setattr(vips_engine, "_loaded", unshared)
    imaging.use_engine("vips")
    try:
        data = samples.encoded(samples.photo(300, 200), "PNG")
        body, _ = imaging.render(data, Variant(Size(150, 150)), LIMITS)
        _, rendered = imaging.render_allowlisted(data, [Size(100, 100)], LIMITS)
    finally:
        imaging.use_engine("pillow")
    assert Image.open(io.BytesIO(body)).size == (150, 100)
    assert Image.open(io.BytesIO(rendered[Size(100, 100)])).size == (100, 67)


@pytest.mark.parametrize("output", ["jpeg", "png", "webp"])
def test_no_rim_where_transparency_meets_colour(output: Format, vips_calls: list[object]) -> None:
    """Found by attacking the engine: resized without premultiplying, the black under clear
    pixels bled into a white disc's edge (a grey rim, 182 at its darkest over white)."""
    disc = Image.new("RGBA", (1000, 1000), (0, 0, 0, 0))
    ImageDraw.Draw(disc).ellipse((100, 100, 900, 900), fill=(255, 255, 255, 255))
    data = samples.encoded(disc, "PNG")
    for render in (
        lambda: imaging.render(data, Variant(Size(130, 130), format=output), LIMITS)[0],
        lambda: imaging.render_allowlisted(data, [Size(130, 130)], LIMITS)[1][Size(130, 130)],
    ):
        pillow, vips = both(render)
        for image in (pillow, vips):
            over_white = Image.new("RGBA", image.size, "white")
            over_white.alpha_composite(image.convert("RGBA"))
            darkest = cast("tuple[int, int]", over_white.convert("L").getextrema())[0]
            assert darkest >= 250, (image.format, darkest)
    assert vips_calls


@pytest.mark.parametrize("width", [200, 201])
def test_an_odd_crop_excess_starts_where_pillows_does(width: int, vips_calls: list[object]) -> None:
    """Both engines take the same columns: each column of the source says its number."""
    ramp = Image.new("RGB", (width, 100))
    ramp.putdata([(x, 0, 0) for _ in range(100) for x in range(width)])
    data = samples.encoded(ramp, "PNG")
    pillow, vips = both(lambda: imaging.render(data, Variant(Size(99, 100), "cover"), LIMITS)[0])
    assert vips_calls
    columns = [[image.convert("RGB").getpixel((x, 50))[0] for x in (0, 1, 98)] for image in (pillow, vips)]  # type: ignore[index]
    assert columns[0] == columns[1]


def test_a_png_variant_does_not_carry_the_sources_resolution(vips_calls: list[object]) -> None:
    data = samples.encoded(samples.photo(300, 200), "PNG", dpi=(123, 123))
    imaging.use_engine("vips")
    body, _ = imaging.render(data, Variant(Size(150, 150)), LIMITS)
    imaging.use_engine("pillow")
    assert vips_calls
    dpi = Image.open(io.BytesIO(body)).info.get("dpi")
    assert dpi is None or round(dpi[0]) != 123
