"""Variants are derived, verified data: only the ImageServer's own writers may store one, a
stored one is sealed to its name (image, size, renderer), and a damaged one is never served
but rendered again."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import requests
import samples
from clusters import metric, start_cluster
from PIL import Image
from servers import WRITER, Processes

from imageserver import sealed
from imageserver.variants import renderer


def _damage(path: Path) -> bytes:
    """Flip a byte of the stored JPEG's scan data; returns the damaged payload."""
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    return bytes(data[sealed.HEADER :])


def _rendered_again(answer: requests.Response, damaged: bytes) -> None:
    assert answer.status_code == 200
    assert answer.content != damaged
    assert Image.open(io.BytesIO(answer.content)).size == (300, 225)


def test_only_the_storage_token_writes_and_a_damaged_variant_is_rendered_again(
    imageserver: Processes, tmp_path: Path
) -> None:
    cluster = start_cluster(imageserver, tmp_path, ("dc-a",), shards=1, replicas=2, quorum=2)
    frontend = cluster.frontends["dc-a"]
    image = samples.jpeg(800, 600, seed=5)
    image_id = requests.post(f"{frontend.url}/v1/images", data=image, timeout=30).json()["id"]
    name = f"{image_id}.300x300.r{renderer()}"
    node = cluster.storage[("dc-a", "s0", 0)]
    forged = sealed.seal(name, samples.jpeg(300, 225, seed=666))
    other = f"{hashlib.sha256(b'x').hexdigest()}.300x300.r{renderer()}"

    # Writers other than the ImageServer's own are refused, however well-formed the blob.
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer"}):
        refused = requests.put(f"{node.url}/v1/blobs/{other}", data=forged, headers=headers, timeout=5)
        assert refused.status_code == 401, refused.text
        assert "storage token" in refused.json()["error"]
    # With the token, a blob must still be sealed to its own name.
    misnamed = requests.put(f"{node.url}/v1/blobs/{other}", data=forged, headers=WRITER, timeout=5)
    assert misnamed.status_code == 400 and "sealed" in misnamed.json()["error"]

    # Damage the stored variant on every replica: it is set aside and rendered again, never served.
    files = [tmp_path / f"dc-a-s0-{r}" / "objects" / image_id[:2] / name for r in (0, 1)]
    assert sealed.unseal(name, files[0].read_bytes()) is not None
    damaged_payloads = {_damage(path) for path in files}
    answer = requests.get(f"{frontend.url}/v1/images/{image_id}?w=300&h=300", timeout=10)
    for damaged_payload in damaged_payloads:
        _rendered_again(answer, damaged_payload)
    damaged = sum(
        metric(cluster.storage[("dc-a", "s0", r)], "imageserver_corrupt_variants_total") for r in (0, 1)
    )
    assert damaged >= 1
    # The re-rendered variant was stored again, sealed; the damaged copies are kept aside.
    assert any(path.exists() and sealed.unseal(name, path.read_bytes()) == answer.content for path in files)
    assert any((tmp_path / f"dc-a-s0-{r}" / "corrupt").is_dir() for r in (0, 1))


def test_a_damaged_variant_on_the_embedded_server_is_rendered_again(
    imageserver: Processes, tmp_path: Path
) -> None:
    server = imageserver.start("serve", "--data", str(tmp_path / "data"))
    image = samples.jpeg(800, 600, seed=6)
    image_id = requests.post(f"{server.url}/v1/images", data=image, timeout=30).json()["id"]
    name = f"{image_id}.300x300.r{renderer()}"
    path = tmp_path / "data" / "objects" / image_id[:2] / name
    damaged = _damage(path)
    answer = requests.get(f"{server.url}/v1/images/{image_id}?w=300&h=300", timeout=10)
    _rendered_again(answer, damaged)
    assert metric(server, "imageserver_corrupt_variants_total") == 1
    assert sealed.unseal(name, path.read_bytes()) == answer.content


def test_mid_upgrade_a_node_may_take_tokenless_writes_but_never_a_wrong_token(
    imageserver: Processes, tmp_path: Path
) -> None:
    node = imageserver.start(
        "storage", "--data", str(tmp_path / "node"), env={"IMAGESERVER_ACCEPT_UNAUTHENTICATED_WRITES": "true"}
    )
    data = b"from a frontend of the release before tokens"
    name = hashlib.sha256(data).hexdigest()
    wrong = requests.put(
        f"{node.url}/v1/blobs/{name}", data=data, headers={"Authorization": "Bearer no"}, timeout=5
    )
    assert wrong.status_code == 401
    assert requests.put(f"{node.url}/v1/blobs/{name}", data=data, timeout=5).status_code == 201
    assert metric(node, "imageserver_unauthenticated_writes_total") == 1
