"""The formats people upload: GIF (still and animated), animated WebP, HEIC/HEIF and AVIF,
each known from its bytes, with the documented rules: HEIC's variants are JPEGs, an animation
stays one in GIF and WebP and is its first frame elsewhere, and every frame counts against the
pixel limit."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import samples
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from imageserver import files, imaging
from imageserver.imaging import Limits, Rejected
from imageserver.variants import Format, Size, Variant

LIMITS = Limits()
HEIC = samples.encoded(samples.photo(400, 300, 1), "HEIF", quality=80)
AVIF = samples.encoded(samples.photo(400, 300, 2), "AVIF", quality=70)


def opened(body: bytes) -> Image.Image:
    return Image.open(io.BytesIO(body))


def colour_of(image: Image.Image) -> tuple[int, ...]:
    value = image.convert("RGB").getpixel((image.width // 2, image.height // 2))
    assert isinstance(value, tuple)
    return value


def near(a: tuple[int, ...], b: tuple[int, ...], tolerance: int = 12) -> bool:
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) <= tolerance


def frames_of(body: bytes) -> list[tuple[tuple[int, ...], int]]:
    """Each frame's colour and duration."""
    image = opened(body)
    found = []
    for index in range(getattr(image, "n_frames", 1)):
        image.seek(index)
        found.append((colour_of(image), int(image.info.get("duration", 0))))
    return found


# -- sniffing ----------------------------------------------------------------------------


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = major + b"\0\0\0\0" + b"".join(compatible)
    return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body + b"\0\0\0\x08free"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        pytest.param(b"GIF89a\x01\x00", "gif", id="gif89a"),
        pytest.param(b"GIF87a\x01\x00", "gif", id="gif87a"),
        pytest.param(b"GIF88a", None, id="no such gif"),
        pytest.param(ftyp(b"heic", b"mif1", b"heic"), "heic", id="heic"),
        pytest.param(ftyp(b"mif1", b"heic"), "heic", id="generic heif"),
        pytest.param(ftyp(b"mif1", b"avif", b"miaf"), "avif", id="avif under a generic brand"),
        pytest.param(ftyp(b"avif", b"mif1"), "avif", id="avif"),
        pytest.param(ftyp(b"avis", b"msf1"), "avif", id="avif sequence"),
        pytest.param(ftyp(b"isom", b"mp41"), None, id="an mp4 video"),
        pytest.param(ftyp(b"heic")[:12], "heic", id="a short head: the major brand"),
        pytest.param(b"\0\0\0\x0bftypheic", None, id="a box of no whole brand"),
        pytest.param(b"\xff\xff\xff\xf0ftypheic", None, id="a huge ftyp box"),
        pytest.param(b"\0\0\0\x18ftyp", None, id="cut after the box type"),
    ],
)
def test_formats_are_known_from_their_bytes(head: bytes, expected: str | None) -> None:
    assert imaging.sniff(head) == expected


@pytest.mark.parametrize(
    ("data", "fmt"), [(HEIC, "heic"), (AVIF, "avif"), (samples.encoded(samples.photo(40, 30), "GIF"), "gif")]
)
def test_each_format_is_probed_from_its_header(data: bytes, fmt: str) -> None:
    info = imaging.probe(data, LIMITS)
    assert (info.format, info.frames) == (fmt, 1)
    assert (info.width, info.height) in ((400, 300), (40, 30))


# -- the format of a variant ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "output"),
    [
        pytest.param(HEIC, "jpeg", id="heic: jpeg, which every browser shows"),
        pytest.param(AVIF, "avif", id="avif"),
        pytest.param(samples.encoded(samples.photo(400, 300), "GIF"), "gif", id="gif"),
    ],
)
def test_a_variant_nobody_chose_a_format_for_is_in_the_originals_or_jpeg(data: bytes, output: Format) -> None:
    info, rendered = imaging.render_allowlisted(data, [Size(300, 300), Size(100, 100)], LIMITS)
    assert info.output == output
    for size, body in rendered.items():
        assert imaging.sniff(body) == output
        assert max(opened(body).size) == min(size.width, 400)
    body, fmt = imaging.render(data, Variant(Size(120, 120), "cover"), LIMITS)
    assert fmt == output and opened(body).size == (120, 120)


def test_a_turned_heic_is_shown_upright() -> None:
    picture = Image.new("RGB", (80, 40), (200, 10, 10))
    picture.paste((0, 0, 255), (0, 0, 10, 10))  # blue at the top left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display turned a quarter clockwise
    data = samples.encoded(picture, "HEIF", exif=exif.tobytes(), quality=90)
    info = imaging.probe(data, LIMITS)
    assert (info.width, info.height) == (40, 80)
    body, _ = imaging.render(data, Variant(Size(40, 80), format="png"), LIMITS)
    shown = opened(body).convert("RGB")
    assert shown.size == (40, 80)
    corner = shown.getpixel((36, 3))  # turned clockwise: the top left is now the top right
    assert isinstance(corner, tuple) and corner[2] > 150 and corner[0] < 100


# -- animation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "output"),
    [
        ("GIF", None),
        ("WEBP", None),
        ("AVIF", None),
        *((source, output) for source in ("GIF", "WEBP", "AVIF") for output in ("gif", "webp", "avif")),
    ],
)
def test_an_animation_stays_one_frame_by_frame_in_formats_that_animate(
    source: str, output: Format | None
) -> None:
    data = samples.animation(200, 150, source, durations=[40, 50, 60, 70, 80])
    info = imaging.probe(data, LIMITS)
    assert info.frames == 5
    body, fmt = imaging.render(data, Variant(Size(100, 100), format=output), LIMITS)
    assert fmt == (output or source.lower())
    result = opened(body)
    assert result.size == (100, 75)
    assert getattr(result, "n_frames", 1) == 5
    assert result.info.get("loop", 0) == 0  # forever, as the original (AVIF: always)
    got = frames_of(body)
    for (colour, duration), expected, wanted in zip(
        got, samples.FRAME_COLOURS, [40, 50, 60, 70, 80], strict=True
    ):
        assert near(colour, expected), (colour, expected)
        assert duration == wanted


@pytest.mark.parametrize(
    ("source", "output"),
    [(source, output) for source in ("GIF", "WEBP", "AVIF") for output in ("jpeg", "png")],
)
def test_an_animation_is_its_first_frame_in_formats_that_do_not_animate(
    source: str, output: Format | None
) -> None:
    data = samples.animation(200, 150, source)
    body, _ = imaging.render(data, Variant(Size(100, 100), "cover", output), LIMITS)
    result = opened(body)
    assert getattr(result, "n_frames", 1) == 1
    assert result.size == (100, 100)
    assert near(colour_of(result), samples.FRAME_COLOURS[0], 16)


def test_the_upload_renders_every_size_of_an_animation() -> None:
    data = samples.animation(600, 400, "GIF")
    info, rendered = imaging.render_allowlisted(data, [Size(300, 300), Size(1200, 1200)], LIMITS)
    assert info.frames == 5
    assert opened(rendered[Size(300, 300)]).size == (300, 200)
    assert opened(rendered[Size(1200, 1200)]).size == (600, 400)  # never upscaled
    for body in rendered.values():
        assert [near(c, e) for (c, _), e in zip(frames_of(body), samples.FRAME_COLOURS, strict=True)] == [
            True
        ] * 5


def test_every_frame_counts_against_the_pixel_limit() -> None:
    limits = Limits(max_pixels=50 * 50 * 40)
    assert imaging.probe(samples.animation(50, 50, "GIF", frames=40), limits).frames == 40
    with pytest.raises(Rejected) as refused:
        imaging.probe(samples.animation(50, 50, "GIF", frames=41), limits)
    assert refused.value.status == 413
    assert "41 frames of 50x50" in refused.value.message


def test_an_animation_costs_its_kept_frames_in_memory() -> None:
    still = imaging.Probe("gif", 500, 500, "P")
    moving = imaging.Probe("gif", 500, 500, "P", frames=100)
    need = (300, 300)
    assert imaging.memory_cost(moving, need, 0) >= imaging.memory_cost(still, need, 0) + 100 * 300 * 300 * 4
    # In a format that does not animate, only the first frame is rendered.
    assert imaging.memory_cost(moving, need, 0, "jpeg") == imaging.memory_cost(still, need, 0, "jpeg")


@pytest.mark.parametrize("cut", [0.5, 0.8, 0.97])
def test_a_cut_animation_is_a_client_error(cut: float) -> None:
    data = samples.animation(120, 90, "GIF", frames=5)
    with pytest.raises(Rejected) as refused:
        imaging.render_allowlisted(data[: int(len(data) * cut)], [Size(60, 60)], LIMITS)
    assert 400 <= refused.value.status < 500


@pytest.mark.parametrize("source", ["GIF", "JPEG"])
@pytest.mark.parametrize("output", [None, "jpeg", "gif", "png", "webp", "avif"])
def test_a_comment_in_the_original_does_not_reach_its_variants(source: str, output: Format | None) -> None:
    data = samples.encoded(samples.photo(120, 90), source, comment=b"secret location 51.5N 0.1W")
    assert b"secret" in data
    body, _ = imaging.render(data, Variant(Size(60, 60), format=output), LIMITS)
    assert b"secret" not in body


# -- hostile bytes ---------------------------------------------------------------------------

SEEDS = [
    samples.animation(48, 32, "GIF", frames=3),
    samples.animation(48, 32, "WEBP", frames=3),
    samples.encoded(samples.photo(48, 32, 7), "HEIF", quality=50),
    samples.encoded(samples.photo(48, 32, 8), "AVIF", quality=50),
    samples.encoded(samples.photo(48, 32, 9), "GIF"),
]


@settings(max_examples=400, deadline=None)
@given(data=samples.damaged(SEEDS), output=st.sampled_from([None, "jpeg", "gif", "webp"]))
def test_damaged_files_of_every_new_format_are_refused_with_a_4xx_or_rendered(
    data: bytes, output: Format | None
) -> None:
    try:
        imaging.render_allowlisted(data, [Size(30, 30)], LIMITS)
        imaging.render(data, Variant(Size(20, 20), "cover", output), LIMITS)
    except Rejected as refused:
        assert 400 <= refused.status < 500


def test_the_heic_decoder_is_loaded_by_the_first_heic_not_at_start_up(tmp_path: Path) -> None:
    """pillow-heif's libraries are 8 MiB of every process that loads them: a storage node or a
    frontend that never sees a HEIC does not."""
    sample = tmp_path / "photo.heic"
    sample.write_bytes(HEIC)
    script = (
        "import sys; from pathlib import Path; from imageserver import files, frontend, imaging; "
        "assert 'pillow_heif' not in sys.modules; "
        "assert imaging.probe(Path(sys.argv[1]).read_bytes(), imaging.Limits()).format == 'heic'; "
        "assert 'pillow_heif' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", script, str(sample)], check=True, timeout=60)


# -- what the first read of this found ---------------------------------------------------------


def gif_of_frames(canvas: tuple[int, int], frames: list[tuple[int, int, int, int]], delay: int = 10) -> bytes:
    """A GIF whose frames (left, top, width, height) each hold one pixel's worth of LZW, each
    shown for `delay` hundredths of a second."""
    pixel = bytes([2, 2, 4 | (0 << 3) | (5 << 6) & 0xFF, (5 << 6) >> 8, 0])
    body = bytearray(b"GIF89a" + struct.pack("<HHBBB", *canvas, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff")
    body += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    for left, top, width, height in frames:
        body += b"\x21\xf9\x04\x00" + struct.pack("<H", delay) + b"\x00\x00"
        body += b"," + struct.pack("<HHHHB", left, top, width, height, 0) + pixel
    return bytes(body + b";")


def test_a_gif_frame_outside_its_canvas_is_refused_before_anything_is_decoded() -> None:
    """Pillow grows the canvas to hold such a frame: 66 bytes became 858 MiB."""
    bomb = gif_of_frames((1, 1), [(0, 0, 1, 1), (9999, 9999, 1, 1)])
    with pytest.raises(Rejected) as refused:
        imaging.probe(bomb, LIMITS)
    assert refused.value.status == 422
    assert "outside its 1x1 canvas" in refused.value.message
    assert imaging.probe(gif_of_frames((4, 4), [(0, 0, 1, 1), (3, 3, 1, 1)]), LIMITS).frames == 2


def test_an_animation_has_at_most_the_frame_limit_however_small_its_frames() -> None:
    limits = Limits(max_frames=50)
    assert imaging.probe(gif_of_frames((1, 1), [(0, 0, 1, 1)] * 50), limits).frames == 50
    with pytest.raises(Rejected) as refused:
        imaging.probe(gif_of_frames((1, 1), [(0, 0, 1, 1)] * 51), limits)
    assert refused.value.status == 413
    assert "51 frames, more than the limit of 50" in refused.value.message


def test_identical_frames_longer_together_than_a_gif_can_say_still_render() -> None:
    """Pillow merges them and refused the sum: two frames of 400 s were a 422."""
    data = gif_of_frames((1, 1), [(0, 0, 1, 1)] * 2, delay=40_000)
    body, _ = imaging.render(data, Variant(Size(20, 20), format="gif"), LIMITS)
    assert opened(body).size == (1, 1)
    assert sum(duration for _, duration in frames_of(body)) == 655_350  # as long as a GIF says


def test_an_avif_named_late_in_its_brands_is_still_served_as_avif() -> None:
    head = ftyp(b"mif1", *[b"miaf"] * 20, b"avif")
    assert len(head) > 64
    assert files.content_type(head[: imaging.SNIFF_BYTES]) == "image/avif"


@st.composite
def mangled_gifs(draw: st.DrawFn) -> bytes:
    """GIFs as a writer makes them, then mangled the ways a reader can be led astray: bytes
    flipped, empty sub-blocks and stray bytes put in, frames put where they do not fit."""
    canvas = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    placed = st.tuples(st.integers(0, 8), st.integers(0, 8), st.integers(1, 8), st.integers(1, 8))
    data = bytearray(gif_of_frames(canvas, draw(st.lists(placed, min_size=1, max_size=4))))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(13, len(data) - 1))
        insert = draw(st.sampled_from([b"\x00", b"\x21\xf9\x00", b"\x21\xfe\x00", b"\x2c", b"\x01", b"\xff"]))
        if draw(st.booleans()):
            data[at:at] = insert
        else:
            data[at] = draw(st.integers(0, 255))
    return bytes(data)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # headers made huge: refused
@settings(max_examples=500, deadline=None)
@given(data=mangled_gifs())
def test_no_gif_frame_pillow_reads_grows_the_canvas_past_what_was_checked(data: bytes) -> None:
    """The walker and Pillow read the same frames: whatever it lets through, Pillow never
    grows the canvas while reading, and finds as many frames as were counted."""
    try:
        info = imaging.probe(data, LIMITS)
    except Rejected:
        return
    image = Image.open(io.BytesIO(data))
    canvas = image.size
    try:
        for index in range(1, 1000):
            image.seek(index)
            assert image.size == canvas, f"frame {index + 1} grew the canvas to {image.size}"
    except EOFError:
        assert index == info.frames, (index, info.frames)
    except (OSError, ValueError, IndexError, struct.error, SyntaxError):
        pass  # a frame that does not decode: a 400 when it is rendered
    assert image.size == canvas, f"a frame grew the canvas to {image.size} before failing"


def test_a_frame_hidden_behind_an_empty_sub_block_is_found_and_checked() -> None:
    """After an extension's empty first sub-block Pillow reads on: a frame behind it is one
    Pillow shows (and grows the canvas for), so it is counted and checked here too."""
    pixel = bytes([2, 2, 0x4C, 0x01, 0])
    head = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    first = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + pixel
    # Read as Pillow does, the 0x2C after the empty sub-block is a 44-byte sub-block.
    decoy = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02" + bytes([255])
    hidden = bytes(33) + b"\x00," + struct.pack("<HHHHB", 0, 0, 3000, 3000, 0) + b"\x02" + b"\x02\x4c\x01\x00"
    data = head + first + b"\x21\xf9\x00" + decoy + hidden + bytes(255 - len(hidden)) + b"\x00;"
    with pytest.raises(Rejected) as refused:
        imaging.probe(data, LIMITS)
    assert refused.value.status == 422
    assert "(3000x3000 at 0,0) lies outside its 1x1 canvas" in refused.value.message


def test_bytes_between_frames_that_pillow_passes_over_are_passed_over() -> None:
    frames = [(0, 0, 2, 2)] * 3
    data = gif_of_frames((2, 2), frames)
    second = data.index(b"\x21\xf9", data.index(b",") + 1)  # the second frame's extension
    stray = data[:second] + b"\x00\x07" + data[second:]
    assert imaging.probe(stray, LIMITS).frames == getattr(Image.open(io.BytesIO(stray)), "n_frames", 1) == 3
