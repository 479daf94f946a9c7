"""The HTTP contract of `imageserver serve`, against a real process on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import samples
from PIL import Image
from servers import ADMIN_TOKEN, SIGNING_KEY, Processes, Server

from imageserver import variants

PHOTO = samples.jpeg(1600, 1000, seed=7)
PHOTO_ID = hashlib.sha256(PHOTO).hexdigest()


@pytest.fixture
def server(imageserver: Processes, tmp_path: Path) -> Server:
    return imageserver.start(
        "serve",
        "--data",
        str(tmp_path / "data"),
        "--max-upload-bytes",
        str(2 << 20),
        "--max-pixels",
        "20000000",
        "--enable-admin",
    )


def upload(server: Server, data: bytes | Iterator[bytes], **headers: str) -> requests.Response:
    return requests.post(f"{server.url}/v1/images", data=data, headers=headers, timeout=30)


def metric(server: Server, prefix: str) -> float:
    lines = requests.get(f"{server.url}/metrics", timeout=5).text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))


def test_upload_then_original_and_allowlisted_variants(server: Server) -> None:
    created = upload(server, PHOTO)
    assert created.status_code == 201, created.text
    assert created.json() == {
        "id": PHOTO_ID,
        "width": 1600,
        "height": 1000,
        "format": "jpeg",
        "bytes": len(PHOTO),
        "variants": ["1200x1200", "300x300"],
    }
    assert created.headers["Location"] == f"/v1/images/{PHOTO_ID}"
    assert upload(server, PHOTO).json()["id"] == PHOTO_ID  # idempotent

    original = requests.get(f"{server.url}/v1/images/{PHOTO_ID}", timeout=5)
    assert original.content == PHOTO
    assert original.headers["Content-Type"] == "image/jpeg"
    assert original.headers["ETag"] == f'"{PHOTO_ID}"'
    assert original.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert "Vary" not in original.headers  # nothing here depends on Accept

    head = requests.head(f"{server.url}/v1/images/{PHOTO_ID}", timeout=5)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(PHOTO)

    small = requests.get(f"{server.url}/v1/images/{PHOTO_ID}", params={"w": 300, "h": 300}, timeout=5)
    assert small.status_code == 200
    assert Image.open(io.BytesIO(small.content)).size == (300, 188)
    assert small.headers["ETag"] == f'"{PHOTO_ID}.300x300.r{variants.renderer()}"'


def test_if_none_match_is_answered_304_before_any_work(server: Server) -> None:
    # The image was never uploaded: a 304 proves nothing was looked up or rendered.
    tag = variants.etag(PHOTO_ID, variants.Variant(variants.Size(300, 300)))
    answer = requests.get(
        f"{server.url}/v1/images/{PHOTO_ID}",
        params={"w": 300, "h": 300},
        headers={"If-None-Match": tag},
        timeout=5,
    )
    assert answer.status_code == 304
    assert answer.headers["ETag"] == tag
    assert requests.get(f"{server.url}/v1/images/{PHOTO_ID}", timeout=5).status_code == 404


def test_other_sizes_need_a_valid_signature_and_render_once(server: Server) -> None:
    upload(server, PHOTO)
    path = f"/v1/images/{PHOTO_ID}"
    query = {"w": "300", "h": "200", "fit": "cover", "format": "webp"}
    refused = requests.get(f"{server.url}{path}", params=query, timeout=5)
    assert refused.status_code == 403
    assert "need a valid signature" in refused.json()["error"]
    signed = {**query, "sig": variants.sign(SIGNING_KEY.encode(), path, query)}
    tampered = {**signed, "w": "301"}
    assert requests.get(f"{server.url}{path}", params=tampered, timeout=5).status_code == 403

    misses_before = metric(server, "imageserver_variant_cache_misses_total")
    for _ in range(3):
        answer = requests.get(f"{server.url}{path}", params=signed, timeout=10)
        assert answer.status_code == 200
        assert answer.headers["Content-Type"] == "image/webp"
        assert Image.open(io.BytesIO(answer.content)).size == (300, 200)
    assert metric(server, "imageserver_variant_cache_misses_total") == misses_before + 1
    assert metric(server, "imageserver_variant_cache_hits_total") >= 2


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"", 400, "empty body"),
        (
            b"just some text, not an image",
            415,
            "not an image this server reads (JPEG, PNG, WebP, GIF, AVIF, HEIC)",
        ),
        (PHOTO[: len(PHOTO) // 2], 400, "cannot decode the image"),
        (samples.png_header_only(50_000, 50_000), 413, "the limit of 20000000"),
        (samples.png_header_only(5_000, 5_000), 413, "25000000 pixels, more than the limit of 20000000"),
        (b"\xff\xd8\xff" + b"\0" * 100, 400, "cannot read the jpeg header"),
        (b"\0" * (3 << 20), 413, "upload is larger than 2097152 bytes"),
        (iter([b"\0" * (1 << 20)] * 3), 413, "upload is larger than 2097152 bytes"),  # chunked
    ],
)
def test_bad_uploads_get_a_4xx_that_says_why(
    server: Server, body: bytes | Iterator[bytes], status: int, message: str
) -> None:
    answer = upload(server, body, **{"Content-Type": "image/jpeg"})
    assert answer.status_code == status
    assert message in answer.json()["error"]
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200


def test_unknown_ids_bad_queries_and_wrong_methods(server: Server) -> None:
    assert requests.get(f"{server.url}/v1/images/{'0' * 64}", timeout=5).status_code == 404
    assert requests.get(f"{server.url}/v1/images/not-an-id", timeout=5).status_code == 404
    assert requests.get(f"{server.url}/v1/images/..%2F..%2Fetc%2Fpasswd", timeout=5).status_code == 404
    bad = requests.get(f"{server.url}/v1/images/{PHOTO_ID}", params={"w": "huge", "h": "1"}, timeout=5)
    assert bad.status_code == 400 and "w must be a whole number" in bad.json()["error"]
    wrong = requests.delete(f"{server.url}/v1/images/{PHOTO_ID}", timeout=5)
    assert wrong.status_code == 405 and "GET" in wrong.headers["Allow"]
    assert requests.put(f"{server.url}/v1/images", data=b"x", timeout=5).status_code == 405


def test_metrics_label_routes_codes_datacenter_and_revision(server: Server) -> None:
    upload(server, PHOTO)
    requests.get(f"{server.url}/v1/images/{'0' * 64}", timeout=5)
    text = requests.get(f"{server.url}/metrics", timeout=5).text
    assert (
        'imageserver_http_requests_total{code="201",datacenter="local",revision="dev",route="upload"} 1.0'
        in text
    )
    assert (
        'imageserver_http_requests_total{code="404",datacenter="local",revision="dev",route="original"}'
        in text
    )
    for bound in ("0.05", "0.1", "0.25", "0.5", "1.0", "2.5"):
        assert f'imageserver_http_request_duration_seconds_bucket{{datacenter="local",le="{bound}"' in text
    assert "imageserver_storage_objects 3.0" in text  # the original and its two variants


def test_admin_endpoints_need_the_token_and_drive_faults_and_drain(server: Server) -> None:
    upload(server, PHOTO)
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert requests.post(f"{server.url}/admin/faults", json={"errorRatio": 1}, timeout=5).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert requests.post(f"{server.url}/admin/drain", headers=wrong, timeout=5).status_code == 401
    bad = requests.post(f"{server.url}/admin/faults", json={"errorRatio": 2}, headers=auth, timeout=5)
    assert bad.status_code == 400 and "between 0 and 1" in bad.json()["error"]

    requests.post(f"{server.url}/admin/faults", json={"errorRatio": 1.0}, headers=auth, timeout=5)
    assert requests.get(f"{server.url}/v1/images/{PHOTO_ID}", timeout=5).status_code == 500
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200  # health is never faulted
    requests.delete(f"{server.url}/admin/faults", headers=auth, timeout=5)
    assert requests.get(f"{server.url}/v1/images/{PHOTO_ID}", timeout=5).status_code == 200

    assert requests.get(f"{server.url}/readyz", timeout=5).status_code == 200
    requests.post(f"{server.url}/admin/drain", headers=auth, timeout=5)
    assert requests.get(f"{server.url}/readyz", timeout=5).text == "draining\n"
    requests.delete(f"{server.url}/admin/drain", headers=auth, timeout=5)
    assert requests.get(f"{server.url}/readyz", timeout=5).status_code == 200


def test_admin_endpoints_do_not_exist_without_enable_admin(imageserver: Processes, tmp_path: Path) -> None:
    plain = imageserver.start("serve", "--data", str(tmp_path / "plain"))
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert requests.post(f"{plain.url}/admin/faults", json={}, headers=auth, timeout=5).status_code == 404


def test_start_up_faults_make_a_deliberately_bad_revision(imageserver: Processes, tmp_path: Path) -> None:
    bad = imageserver.start(
        "serve",
        "--data",
        str(tmp_path / "bad"),
        env={"IMAGESERVER_FAULT_ERROR_RATIO": "0.5", "IMAGESERVER_REVISION": "r2"},
    )
    codes = [requests.get(f"{bad.url}/v1/images/{'0' * 64}", timeout=5).status_code for _ in range(200)]
    assert 60 < codes.count(500) < 140 and codes.count(404) == 200 - codes.count(500)
    assert 'revision="r2"' in requests.get(f"{bad.url}/metrics", timeout=5).text
