"""The storage node's disk: complete files only, idempotent writes, no path escapes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from imageserver.blobstore import BadBlob, BlobStore
from imageserver.sealed import seal
from imageserver.variants import renderer

DATA = b"image bytes"
ID = hashlib.sha256(DATA).hexdigest()
VARIANT = f"{ID}.300x300.r{renderer()}"
VARIANT_BLOB = seal(VARIANT, b"variant")


def test_a_write_is_stored_under_its_name_and_counted_once(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    assert store.put(ID, DATA)
    assert not store.put(ID, DATA)  # idempotent
    assert store.put(VARIANT, VARIANT_BLOB)
    assert store.read(ID) == DATA
    assert (store.count, store.bytes) == (2, len(DATA) + len(VARIANT_BLOB))
    assert BlobStore(tmp_path).count == 2  # counted again from disk after a restart
    assert not any(store.tmp.iterdir())


def test_a_variant_must_come_sealed_to_its_name(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(BadBlob, match="sealed"):
        store.put(VARIANT, b"variant")
    other = f"{ID}.1200x1200.r{renderer()}"
    with pytest.raises(BadBlob, match="sealed"):
        store.put(other, VARIANT_BLOB)  # another variant's seal


def test_a_variant_stored_before_renderer_tags_is_kept_and_served_as_it_is(tmp_path: Path) -> None:
    """Mid-upgrade, older frontends still write and read variants named without a renderer."""
    store = BlobStore(tmp_path)
    legacy = f"{ID}.300x300"
    assert store.put(legacy, b"old variant")
    assert store.read_variant(legacy) == b"old variant"
    assert store.names_of(ID) == [legacy]


def test_a_damaged_variant_is_set_aside_and_can_be_written_again(tmp_path: Path) -> None:
    damaged: list[str] = []
    store = BlobStore(tmp_path, on_corrupt=damaged.append)
    store.put(VARIANT, VARIANT_BLOB)
    path = store.path(VARIANT)
    path.write_bytes(VARIANT_BLOB[:-1] + b"X")
    assert store.read_variant(VARIANT) is None
    assert damaged == [VARIANT] and not path.exists()
    assert [p.name.split(".r")[0] for p in store.corrupt.iterdir()] == [VARIANT.split(".r", maxsplit=1)[0]]
    assert store.count == 0
    assert store.put(VARIANT, VARIANT_BLOB)
    assert store.read_variant(VARIANT) == VARIANT_BLOB
    # Damaged while present: a write of the sound one replaces it.
    path.write_bytes(b"garbage")
    assert store.put(VARIANT, VARIANT_BLOB)
    assert store.read_variant(VARIANT) == VARIANT_BLOB


def test_an_original_must_match_its_sha256_name(tmp_path: Path) -> None:
    with pytest.raises(BadBlob, match="content does not match"):
        BlobStore(tmp_path).put(ID, b"other bytes")


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        f"{ID}/../../x",
        f"{ID}.300x300/../x",
        f"{ID}.300x300.r{renderer()}x",
        ID.upper(),
        ID[:-1],
        f"{ID}.jpg",
        "",
        ".",
    ],
)
def test_names_outside_the_pattern_never_reach_the_disk(tmp_path: Path, name: str) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(BadBlob):
        store.put(name, DATA)
    with pytest.raises(BadBlob):
        store.open_path(name)


def test_a_write_cut_short_by_a_crash_is_invisible_and_cleaned_at_start(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    (store.tmp / f"{ID}.deadbeef").write_bytes(DATA[:3])  # what a kill -9 mid-write leaves
    assert store.open_path(ID) is None
    restarted = BlobStore(tmp_path)
    assert not any(restarted.tmp.iterdir())
    assert restarted.count == 0
