"""Whatever a client sends, the answer is never a 5xx and the server stays up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
import samples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import Processes, Server, server_errors

VALID = [
    samples.jpeg(120, 90, seed=1),
    samples.encoded(samples.photo(64, 48, 2), "PNG"),
    samples.encoded(samples.photo(64, 48, 3), "WEBP"),
    samples.with_orientation(samples.photo(80, 40, 4), 8),
    samples.animation(60, 40, "GIF", frames=3),
    samples.animation(60, 40, "WEBP", frames=3),
    samples.encoded(samples.photo(64, 48, 5), "HEIF", quality=50),
    samples.encoded(samples.photo(64, 48, 6), "AVIF", quality=50),
]
MAGIC = [
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"RIFF\0\0\0\0WEBP",
    b"GIF89a",
    b"\0\0\0\x18ftypheic\0\0\0\0mif1heic",
    b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf",
]
CONTENT_TYPES = ["image/jpeg", "image/png", "text/plain", "application/octet-stream", "", "image/gif; x=\x7f"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    processes = Processes(tmp_path_factory.mktemp("hostile"))
    data = tmp_path_factory.mktemp("data")
    yield processes.start(
        "serve", "--data", str(data), "--max-upload-bytes", str(1 << 20), "--max-pixels", "4000000"
    )
    processes.stop_all()


@st.composite
def hostile_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "truncated", "flipped", "magic", "bomb"]))
    if kind == "random":
        return draw(st.binary(max_size=4096))
    if kind == "truncated":
        image = draw(st.sampled_from(VALID))
        return image[: draw(st.integers(0, len(image) - 1))]
    if kind == "flipped":
        flipped = bytearray(draw(st.sampled_from(VALID)))
        for _ in range(draw(st.integers(1, 12))):
            flipped[draw(st.integers(0, len(flipped) - 1))] = draw(st.integers(0, 255))
        return bytes(flipped)
    if kind == "magic":
        return draw(st.sampled_from(MAGIC)) + draw(st.binary(max_size=2048))
    width, height = draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 2**31 - 1))
    return samples.png_header_only(width, height)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=hostile_bodies(), content_type=st.sampled_from(CONTENT_TYPES))
def test_hostile_uploads_never_get_a_5xx(server: Server, body: bytes, content_type: str) -> None:
    answer = requests.post(
        f"{server.url}/v1/images", data=body, headers={"Content-Type": content_type}, timeout=30
    )
    assert 200 <= answer.status_code < 500, (answer.status_code, answer.text)
    if answer.headers.get("Content-Type", "").startswith("application/json"):
        assert answer.status_code < 400 or answer.json()["error"]
    else:  # refused by the HTTP parser itself (say, a control byte in a header)
        assert answer.status_code == 400


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    image_id=st.one_of(st.text(max_size=80), st.just("ab" * 32)),
    query=st.dictionaries(st.sampled_from(["w", "h", "fit", "format", "sig", "zz"]), st.text(max_size=12)),
)
def test_hostile_reads_never_get_a_5xx(server: Server, image_id: str, query: dict[str, str]) -> None:
    answer = requests.get(f"{server.url}/v1/images/{quote(image_id, safe='')}", params=query, timeout=30)
    assert answer.status_code < 500, (answer.status_code, answer.text)


def test_the_server_is_still_up_and_still_works(server: Server, tmp_path: Path) -> None:
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
    assert requests.post(f"{server.url}/v1/images", data=VALID[0], timeout=30).status_code == 201
    assert server_errors(server.url) == 0
