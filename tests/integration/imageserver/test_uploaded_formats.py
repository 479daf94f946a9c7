"""GIF, animated WebP, HEIC and AVIF uploads against a real `imageserver serve`, with each
rendering engine: each is stored byte-exact and served with its own type; its variants follow
the documented rules (HEIC's are JPEGs, an animation stays one in GIF and WebP, colours come
out in sRGB)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import samples
from PIL import Image
from servers import SIGNING_KEY, Processes, Server

from imageserver import variants

HEIC = samples.encoded(samples.photo(640, 480, 3), "HEIF", quality=80)
AVIF = samples.encoded(samples.photo(640, 480, 4), "AVIF", quality=70)
GIF = samples.animation(480, 320, "GIF")
WEBP = samples.animation(480, 320, "WEBP")
P3 = samples.icc_profile("Display P3", samples.DISPLAY_P3_PRIMARIES, 2.2)
WIDE = samples.encoded(Image.new("RGB", (640, 480), (200, 120, 90)), "JPEG", quality=95, icc_profile=P3)


@pytest.fixture(scope="module", params=["pillow", "vips"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Each engine: whatever renders, the rules are the same (libvips hands what it does not
    take, animations and HEIC, to Pillow)."""
    processes = Processes(tmp_path_factory.mktemp("formats"))
    data = str(tmp_path_factory.mktemp("data"))
    yield processes.start("serve", "--data", data, "--engine", request.param)
    processes.stop_all()


def upload(server: Server, data: bytes) -> dict[str, object]:
    answer = requests.post(f"{server.url}/v1/images", data=data, timeout=30)
    assert answer.status_code == 201, answer.text
    body: dict[str, object] = answer.json()
    assert body["id"] == hashlib.sha256(data).hexdigest()
    return body


@pytest.mark.parametrize(
    ("data", "fmt", "original_type", "variant_type"),
    [
        pytest.param(HEIC, "heic", "image/heic", "image/jpeg", id="heic"),
        pytest.param(AVIF, "avif", "image/avif", "image/avif", id="avif"),
        pytest.param(GIF, "gif", "image/gif", "image/gif", id="animated gif"),
        pytest.param(WEBP, "webp", "image/webp", "image/webp", id="animated webp"),
    ],
)
def test_each_format_is_stored_as_sent_and_its_variants_follow_the_rules(
    server: Server, data: bytes, fmt: str, original_type: str, variant_type: str
) -> None:
    body = upload(server, data)
    assert body["format"] == fmt
    url = f"{server.url}/v1/images/{body['id']}"
    original = requests.get(url, timeout=10)
    assert original.status_code == 200
    assert original.content == data
    assert original.headers["Content-Type"] == original_type
    variant = requests.get(url, params={"w": "300", "h": "300"}, timeout=10)
    assert variant.status_code == 200, variant.text
    assert variant.headers["Content-Type"] == variant_type
    image = Image.open(io.BytesIO(variant.content))
    assert max(image.size) == 300
    assert getattr(image, "n_frames", 1) == (5 if data in (GIF, WEBP) else 1)


def test_a_signed_variant_of_an_animation_in_a_still_format_is_its_first_frame(server: Server) -> None:
    image_id = upload(server, GIF)["id"]
    path = f"/v1/images/{image_id}"
    query = {"w": "100", "h": "100", "fit": "cover", "format": "jpeg"}
    query["sig"] = variants.sign(SIGNING_KEY.encode(), path, query)
    answer = requests.get(f"{server.url}{path}", params=query, timeout=10)
    assert answer.status_code == 200, answer.text
    still = Image.open(io.BytesIO(answer.content)).convert("RGB")
    assert still.size == (100, 100)
    pixel = still.getpixel((50, 50))
    assert isinstance(pixel, tuple)
    assert max(abs(a - b) for a, b in zip(pixel, samples.FRAME_COLOURS[0], strict=True)) <= 16


def test_a_display_p3_photo_comes_out_in_srgb(server: Server) -> None:
    image_id = upload(server, WIDE)["id"]
    answer = requests.get(f"{server.url}/v1/images/{image_id}", params={"w": "300", "h": "300"}, timeout=10)
    variant = Image.open(io.BytesIO(answer.content))
    assert "icc_profile" not in variant.info
    pixel = variant.convert("RGB").getpixel((150, 100))
    assert isinstance(pixel, tuple)
    expected = samples.in_srgb((200, 120, 90), samples.DISPLAY_P3_PRIMARIES, 2.2)
    assert max(abs(a - b) for a, b in zip(pixel, expected, strict=True)) <= 6


def test_an_animation_past_the_pixel_limit_is_refused_with_the_reason(
    imageserver: Processes, tmp_path: Path
) -> None:
    small = imageserver.start("serve", "--data", str(tmp_path / "data"), "--max-pixels", str(100 * 100 * 20))
    answer = requests.post(f"{small.url}/v1/images", data=samples.animation(100, 100, frames=21), timeout=30)
    assert answer.status_code == 413
    assert "21 frames of 100x100" in answer.json()["error"]
    fits = requests.post(f"{small.url}/v1/images", data=samples.animation(100, 100, frames=20), timeout=30)
    assert fits.status_code == 201


def test_variants_are_named_by_the_engine_that_made_them(server: Server) -> None:
    """A JPEG's variant, made by the chosen engine, is tagged with it: Pillow's tag only under
    Pillow, so no cache or browser takes one engine's bytes for the other's."""
    body = upload(server, samples.jpeg(640, 480, seed=11))
    answer = requests.get(f"{server.url}/v1/images/{body['id']}?w=300&h=300", timeout=10)
    assert answer.status_code == 200, answer.text
    assert Image.open(io.BytesIO(answer.content)).size == (300, 225)
    pillows = answer.headers["ETag"].endswith(f'.r{variants.renderer()}"')
    assert pillows == (server.argv[server.argv.index("--engine") + 1] == "pillow")
