"""What a render will cost in memory, known from the header before any pixel is decoded: the
decoded size follows Pillow's own JPEG draft rule, the estimate grows with pixels and bytes
per pixel, and it stays above what a real render takes at its peak. An estimate below the
peak lets the memory gate admit more than the process can hold."""

from __future__ import annotations

import io
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import samples
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from imageserver import imaging
from imageserver.imaging import Limits, Probe
from imageserver.variants import Format, Size, Variant, default_allowlist

LIMITS = Limits()


def picture(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """Smooth content, quick to make and to encode: memory depends on pixels, not content."""
    ramp = Image.linear_gradient("L").resize((width, height))
    bands = (
        ramp,
        ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        ramp.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
    )
    image = Image.merge("RGB", bands)
    return image if mode == "RGB" else image.convert(mode)


OPTIONS: dict[str, dict[str, object]] = {
    "JPEG": {"quality": 90},
    "PNG": {"compress_level": 1},
    "AVIF": {"quality": 80, "speed": 10},
    "HEIF": {"quality": 80},
}


def encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **OPTIONS.get(fmt, {}))
    return out.getvalue()


@pytest.fixture(scope="module")
def jpegs() -> dict[tuple[int, int], bytes]:
    return {size: encoded(picture(*size), "JPEG") for size in [(3000, 2000), (3001, 2001)]}


# -- the decoded size: Pillow's draft rule ---------------------------------------------------


@pytest.mark.parametrize("size", [(3000, 2000), (3001, 2001)], ids=["even", "odd"])
@pytest.mark.parametrize(
    "need",
    [
        (3000, 2000),
        (1600, 1000),  # just above half: no scaling
        (1500, 1000),  # exactly half
        (1499, 999),
        (1200, 1200),  # the height rules
        (1200, 800),
        (750, 500),  # exactly a quarter
        (749, 499),
        (376, 251),
        (375, 250),  # exactly an eighth
        (300, 300),
        (300, 200),
        (1, 1),  # never smaller than an eighth
    ],
)
def test_a_jpeg_is_decoded_at_the_size_pillows_draft_chooses(
    jpegs: dict[tuple[int, int], bytes], size: tuple[int, int], need: tuple[int, int]
) -> None:
    data = jpegs[size]
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", need)
    assert imaging.decoded_size(imaging.probe(data, LIMITS), need) == image.size


@pytest.mark.parametrize("need", [(1000, 1500), (400, 300), (250, 375)])
def test_a_turned_jpeg_decodes_the_same_area_as_its_stored_orientation(need: tuple[int, int]) -> None:
    data = samples.with_orientation(picture(3000, 2000), 6)
    info = imaging.probe(data, LIMITS)
    assert (info.width, info.height) == (2000, 3000)  # displayed
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", need[::-1])  # what _decode asks of the stored image
    width, height = imaging.decoded_size(info, need)
    assert width * height == image.size[0] * image.size[1]


@pytest.mark.parametrize("fmt", ["png", "webp"])
@pytest.mark.parametrize("need", [(1, 1), (300, 300), (3000, 2000)])
def test_formats_without_draft_decode_at_full_size(fmt: Format, need: tuple[int, int]) -> None:
    assert imaging.decoded_size(Probe(fmt, 3000, 2000), need) == (3000, 2000)


# -- the estimate ----------------------------------------------------------------------------

NEED = (300, 300)


def cost(fmt: Format, width: int, height: int, mode: str = "RGB", encoded_bytes: int = 0) -> int:
    return imaging.memory_cost(Probe(fmt, width, height, mode), NEED, encoded_bytes)


def test_the_estimate_grows_with_the_pixels() -> None:
    assert cost("png", 1000, 1000) < cost("png", 2000, 1000) < cost("png", 2000, 2000)


def test_alpha_costs_more_than_colour_and_grey_less() -> None:
    assert cost("png", 2000, 2000, "L") < cost("png", 2000, 2000, "RGB") < cost("png", 2000, 2000, "RGBA")
    # Palette and 1-bit images are converted to RGB(A) to be resized: priced like RGBA.
    assert cost("png", 2000, 2000, "P") == cost("png", 2000, 2000, "1") == cost("png", 2000, 2000, "RGBA")
    assert cost("png", 2000, 2000, "LA") > cost("png", 2000, 2000, "RGB")
    assert cost("webp", 2000, 2000, "RGB") > cost("png", 2000, 2000, "RGB")  # libwebp's canvases


def test_the_estimate_includes_the_encoded_bytes() -> None:
    assert cost("png", 2000, 2000, encoded_bytes=5_000_000) - cost("png", 2000, 2000) == 5_000_000


def test_a_jpeg_that_decodes_scaled_costs_less_than_a_png_of_the_same_size() -> None:
    assert cost("jpeg", 4000, 3000) < cost("png", 4000, 3000)


@given(
    width=st.integers(1, 10_000),
    height=st.integers(1, 10_000),
    need=st.tuples(st.integers(1, 5000), st.integers(1, 5000)),
    more=st.tuples(st.integers(0, 5000), st.integers(0, 5000)),
    mode=st.sampled_from(["1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "I;16"]),
)
def test_asking_for_more_never_costs_less(
    width: int, height: int, need: tuple[int, int], more: tuple[int, int], mode: str
) -> None:
    info = Probe("jpeg", width, height, mode)
    bigger = (need[0] + more[0], need[1] + more[1])
    assert imaging.memory_cost(info, need, 0) <= imaging.memory_cost(info, bigger, 0)
    # Never below the pixels the decoder must at least hold, one byte each, at an eighth.
    assert imaging.memory_cost(info, need, 0) >= -(-width // 8) * -(-height // 8)


@pytest.mark.parametrize(
    ("size", "sizes", "expected"),
    [
        pytest.param((3000, 2000), default_allowlist(), (1200, 800), id="largest allowlisted"),
        pytest.param((800, 600), default_allowlist(), (800, 600), id="never upscaled"),
        pytest.param((3000, 2000), (), (3000, 2000), id="no sizes: the whole image"),
    ],
)
def test_an_upload_decodes_down_to_its_largest_rendition(
    size: tuple[int, int], sizes: tuple[Size, ...], expected: tuple[int, int]
) -> None:
    assert imaging.upload_need(Probe("jpeg", *size), sizes) == expected


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        pytest.param(Variant(Size(300, 300)), (300, 200), id="contain"),
        pytest.param(Variant(Size(300, 300), "cover"), (450, 300), id="cover fills the box"),
        pytest.param(Variant(Size(4000, 4000), "cover"), (3000, 2000), id="cover never upscales"),
    ],
)
def test_a_variant_decodes_down_to_what_fills_its_box(variant: Variant, expected: tuple[int, int]) -> None:
    assert imaging.variant_need(Probe("jpeg", 3000, 2000), variant) == expected


# -- calibration against real renders ---------------------------------------------------------

# A child's ru_maxrss starts at its parent's peak on Linux (it is kept across fork and exec),
# so with this test process as the parent it would hide the render. VmHWM is the peak of the
# child's own address space: the render's peak, whatever this process did before.
MEASURE = textwrap.dedent(
    """
    import io, sys
    from pathlib import Path
    from PIL import Image
    from imageserver import imaging, memory
    from imageserver.variants import Size, Variant, default_allowlist

    memory.return_large_buffers()  # as the server does when it starts
    import pillow_heif  # loaded by a first HEIC in a server; here to make the warm-up's
    pillow_heif.register_heif_opener()

    def peak_kib():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

    path, mode, fmt, variant, out, engine = sys.argv[1:7]
    imaging.use_engine(engine)
    data = Path(path).read_bytes()
    # Warm up, as a serving process is: the codecs are loaded before the baseline.
    small = io.BytesIO()
    Image.new(mode, (64, 64)).save(small, fmt)
    imaging.render_allowlisted(small.getvalue(), default_allowlist(), imaging.Limits())
    before = peak_kib()
    if variant == "upload":
        imaging.render_allowlisted(data, default_allowlist(), imaging.Limits())
    else:
        width, height = map(int, variant.split("x"))
        imaging.render(data, Variant(Size(width, height), format=out or None), imaging.Limits())
    print(peak_kib() - before)
    """
)


def measured_peak(
    path: Path, mode: str, fmt: str, variant: str, out: str = "", engine: imaging.Engine = "pillow"
) -> int:
    """Bytes a render takes at its peak above the baseline, in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), mode, fmt, variant, out, engine],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(done.stdout) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize(
    ("width", "height", "mode", "fmt"),
    [
        pytest.param(3000, 3000, "RGBA", "PNG", id="rgba png"),  # premultiplied copy when resized
        pytest.param(4000, 4000, "RGB", "PNG", id="rgb png"),
        pytest.param(3000, 2000, "RGB", "JPEG", id="rgb jpeg drafted"),
        pytest.param(3000, 3000, "RGB", "WEBP", id="webp: libwebp's canvases"),
        pytest.param(3000, 3000, "P", "PNG", id="palette png"),
        pytest.param(3000, 3000, "P", "GIF", id="gif"),
        pytest.param(2000, 2000, "RGB", "AVIF", id="avif: dav1d's planes and libavif's RGB"),
        pytest.param(2000, 2000, "RGB", "HEIF", id="heic: libde265's planes and libheif's RGB"),
    ],
)
def test_the_upload_estimate_covers_the_measured_peak(
    tmp_path: Path, width: int, height: int, mode: str, fmt: str
) -> None:
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(encoded(picture(width, height, mode), fmt))
    info = imaging.probe(path.read_bytes(), LIMITS)
    need = imaging.upload_need(info, default_allowlist())
    peak = measured_peak(path, mode, fmt, "upload")
    decoded = imaging.decoded_size(info, need)
    # The measurement works: the decoded pixels alone show up (Pillow keeps at least 1 byte each).
    assert peak >= decoded[0] * decoded[1]
    assert imaging.memory_cost(info, need, 0) >= peak


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize(
    ("width", "height", "mode", "fmt"),
    [
        pytest.param(3000, 3000, "RGBA", "PNG", id="rgba png"),
        pytest.param(4000, 4000, "RGB", "PNG", id="rgb png"),
        pytest.param(3000, 2000, "RGB", "JPEG", id="rgb jpeg"),
        pytest.param(3000, 3000, "RGB", "WEBP", id="webp"),
    ],
)
@pytest.mark.parametrize("variant", ["upload", "near full size"])
def test_the_same_price_covers_libvips_peak(
    tmp_path: Path, width: int, height: int, mode: str, fmt: str, variant: str
) -> None:
    """One price for both engines (`--engine` changes no admission rule), and it covers
    libvips' peak too (measured at upload: 16-36 MiB against prices of 23-185 MiB; libvips
    streams a PNG or WebP where Pillow holds it whole). AVIF sources are Pillow's: libheif
    held more than the price of a 10-bit or 4:4:4 AVIF."""
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(encoded(picture(width, height, mode), fmt))
    data = path.read_bytes()
    info = imaging.probe(data, LIMITS)
    if variant == "upload":
        need = imaging.upload_need(info, default_allowlist())
        peak = measured_peak(path, mode, fmt, "upload", engine="vips")
    else:
        asked = Variant(Size(width - 48, height - 48))
        need = imaging.variant_need(info, asked)
        peak = measured_peak(path, mode, fmt, f"{width - 48}x{height - 48}", engine="vips")
    assert peak >= need[0] * need[1]  # the measurement works: the result alone shows up
    assert imaging.memory_cost(info, need, len(data)) >= peak


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize(
    "out",
    [
        None,  # measured ~47 MiB: the source, an intermediate and the result at once
        "avif",  # format=auto picks it for most browsers: libavif's encoder is in the price
    ],
)
def test_the_variant_estimate_covers_the_measured_peak_of_a_render_near_full_size(
    tmp_path: Path, out: Format | None
) -> None:
    path = tmp_path / "image.png"
    path.write_bytes(encoded(picture(2048, 2048), "PNG"))
    data = path.read_bytes()
    info = imaging.probe(data, LIMITS)
    variant = Variant(Size(2000, 2000), format=out)  # a signed variant a little smaller than the original
    peak = measured_peak(path, "RGB", "PNG", "2000x2000", out or "")
    assert peak >= 2048 * 2048 * 4  # the decode alone
    assert imaging.memory_cost(info, imaging.variant_need(info, variant), len(data), out) >= peak


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("mode", ["P", "1"])
def test_a_palette_or_bilevel_image_converted_to_jpeg_is_priced_for_its_conversions(
    tmp_path: Path, mode: str
) -> None:
    """A palette or 1-bit PNG becomes RGB(A) to be resized and RGB to be a JPEG: measured
    152 MiB for a 4000x4000 palette PNG where 1 byte per pixel priced 54 MiB."""
    path = tmp_path / "image.png"
    path.write_bytes(encoded(picture(3000, 3000, mode), "PNG"))
    data = path.read_bytes()
    info = imaging.probe(data, LIMITS)
    variant = Variant(Size(2800, 2800), format="jpeg")
    peak = measured_peak(path, mode, "PNG", "2800x2800", "jpeg")
    assert imaging.memory_cost(info, imaging.variant_need(info, variant), len(data)) >= peak


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize(("variant", "out"), [("upload", "gif"), ("790x590", "gif"), ("790x590", "webp")])
def test_an_animation_is_priced_for_every_frame_it_keeps(tmp_path: Path, variant: str, out: Format) -> None:
    """40 frames of 800x600, each different: measured 114 MiB for the upload and 101 MiB for a
    GIF variant near full size (every result frame held, then the encoder's own copies)."""
    base = picture(800, 600)
    frames = [base.rotate(i * 9) for i in range(40)]
    path = tmp_path / "image.gif"
    path.write_bytes(samples.encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50))
    data = path.read_bytes()
    info = imaging.probe(data, LIMITS)
    assert info.frames == 40
    if variant == "upload":  # in GIF, the original's format
        cost = imaging.memory_cost(info, imaging.upload_need(info, default_allowlist()), 0)
        assert cost >= measured_peak(path, "P", "GIF", "upload")
        return
    asked = Variant(Size(790, 590), format=out)
    peak = measured_peak(path, "P", "GIF", variant, out)
    assert peak >= 40 * 790 * 590 * 4  # every frame's result, at once
    assert imaging.memory_cost(info, imaging.variant_need(info, asked), len(data), out) >= peak


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_a_gif_variant_is_priced_for_its_quantizer(tmp_path: Path) -> None:
    """Pillow quantizes a GIF frame to 256 colours in buffers of its own: colour noise (the
    most colours to sort) measured 63 MiB here where the other terms price 28."""
    path = tmp_path / "noise.png"
    noise = Image.frombytes("RGB", (1200, 1200), random.Random(7).randbytes(1200 * 1200 * 3))
    path.write_bytes(encoded(noise, "PNG"))
    data = path.read_bytes()
    info = imaging.probe(data, LIMITS)
    variant = Variant(Size(1150, 1150), format="gif")
    peak = measured_peak(path, "RGB", "PNG", "1150x1150", "gif")
    assert imaging.memory_cost(info, imaging.variant_need(info, variant), len(data), "gif") >= peak
