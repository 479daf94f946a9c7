"""AVIF and WebP negotiated from Accept, against a real `imageserver serve`: each browser gets
the format it asked for, whatever a cache saw before (thumbor #1584), with `Vary: Accept`."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
import requests
import samples
from PIL import Image
from servers import SIGNING_KEY, Processes, Server

from imageserver import variants

PHOTO = samples.jpeg(1600, 1000, seed=21)
PHOTO_ID = hashlib.sha256(PHOTO).hexdigest()
PATH = f"/v1/images/{PHOTO_ID}"
CHROME = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
SAFARI_15 = "image/webp,image/png,image/svg+xml,image/*;q=0.8,video/*;q=0.8,*/*;q=0.5"
OLD = "image/png,image/*;q=0.8,*/*;q=0.5"


def start(imageserver: Processes, tmp_path: Path, default: str) -> Server:
    server = imageserver.start("serve", "--data", str(tmp_path / "data"), "--variant-format", default)
    assert requests.post(f"{server.url}/v1/images", data=PHOTO, timeout=30).status_code == 201
    return server


def get(
    server: Server, accept: str, query: dict[str, str] | None = None, if_none_match: str = ""
) -> requests.Response:
    headers = {"Accept": accept, **({"If-None-Match": if_none_match} if if_none_match else {})}
    params = query if query is not None else {"w": "300", "h": "300"}
    return requests.get(f"{server.url}{PATH}", params=params, headers=headers, timeout=10)


def renders(server: Server) -> float:
    lines = requests.get(f"{server.url}/metrics", timeout=5).text.splitlines()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("imageserver_renders_total")
    )


def test_each_browser_gets_the_format_it_asks_for_whatever_was_asked_before(
    imageserver: Processes, tmp_path: Path
) -> None:
    server = start(imageserver, tmp_path, "auto")
    seen = {}
    for accept, content_type in ((CHROME, "image/avif"), (SAFARI_15, "image/webp"), (OLD, "image/jpeg")):
        answer = get(server, accept)
        assert answer.status_code == 200, answer.text
        assert answer.headers["Content-Type"] == content_type
        assert answer.headers["Vary"] == "Accept"
        assert Image.open(io.BytesIO(answer.content)).size == (300, 188)
        seen[content_type] = answer.headers["ETag"]
    assert len(set(seen.values())) == 3
    assert seen["image/jpeg"] == variants.etag(
        PHOTO_ID, variants.Variant(variants.Size(300, 300))
    )  # upload's
    assert ".avif." in seen["image/avif"]

    # The AVIF is cached now; a browser that cannot show it, revalidating with its tag, gets
    # its own format in full, never a 304 onto the AVIF nor the AVIF itself.
    before = renders(server)
    other = get(server, OLD, if_none_match=seen["image/avif"])
    assert (other.status_code, other.headers["Content-Type"]) == (200, "image/jpeg")
    same = get(server, CHROME, if_none_match=seen["image/avif"])
    assert same.status_code == 304 and same.headers["Vary"] == "Accept"
    for accept in (CHROME, SAFARI_15):  # rendered once and kept: served again, not rendered
        assert get(server, accept).status_code == 200
    assert renders(server) == before

    # The original is not negotiated.
    original = requests.get(f"{server.url}{PATH}", headers={"Accept": CHROME}, timeout=10)
    assert original.content == PHOTO and "Vary" not in original.headers
    # An error is an answer to this Accept too.
    missing = requests.get(
        f"{server.url}/v1/images/{'0' * 64}?w=300&h=300", headers={"Accept": CHROME}, timeout=10
    )
    assert (missing.status_code, missing.headers["Vary"]) == (404, "Accept")


def test_format_auto_is_asked_for_in_the_url_where_the_default_is_the_original(
    imageserver: Processes, tmp_path: Path
) -> None:
    server = start(imageserver, tmp_path, "original")
    plain = get(server, CHROME)
    assert plain.headers["Content-Type"] == "image/jpeg" and "Vary" not in plain.headers
    auto = get(server, CHROME, {"w": "300", "h": "300", "format": "auto"})
    assert (auto.headers["Content-Type"], auto.headers["Vary"]) == ("image/avif", "Accept")
    # Other sizes still need a signature; one signature serves every negotiated format.
    query = {"w": "320", "h": "200", "fit": "cover", "format": "auto"}
    assert get(server, CHROME, query).status_code == 403
    signed = {**query, "sig": variants.sign(SIGNING_KEY.encode(), PATH, query)}
    for accept, content_type in ((CHROME, "image/avif"), (SAFARI_15, "image/webp"), (OLD, "image/jpeg")):
        answer = get(server, accept, signed)
        assert (answer.status_code, answer.headers["Content-Type"]) == (200, content_type)
        assert Image.open(io.BytesIO(answer.content)).size == (320, 200)


@pytest.mark.parametrize("fmt", ["avif", "webp"])
def test_a_named_format_is_not_negotiated(imageserver: Processes, tmp_path: Path, fmt: str) -> None:
    server = start(imageserver, tmp_path, "auto")
    query = {"w": "300", "h": "200", "fit": "cover", "format": fmt}
    signed = {**query, "sig": variants.sign(SIGNING_KEY.encode(), PATH, query)}
    answer = get(server, OLD, signed)
    assert answer.headers["Content-Type"] == f"image/{fmt}" and "Vary" not in answer.headers
