"""Range requests (RFC 9110 §14): the one range a GET asks for, or the whole blob when this
server ignores it, as the RFC lets it; 416 when it starts past the end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from imageserver.files import OpenFile, OpenFiles, Unsatisfiable, blob_response, requested_span

TAG = '"abc"'


@pytest.mark.parametrize(
    ("header", "if_range", "size", "span"),
    [
        (None, None, 100, None),
        ("bytes=0-9", None, 100, (0, 10)),
        ("bytes=90-", None, 100, (90, 10)),
        ("bytes=90-500", None, 100, (90, 10)),  # past the end: up to the end
        ("bytes=-10", None, 100, (90, 10)),
        ("bytes=-500", None, 100, (0, 100)),  # a suffix longer than the blob: all of it
        ("bytes=99-99", None, 100, (99, 1)),
        ("bytes = 0 - 9", None, 100, (0, 10)),
        ("BYTES=0-9", None, 100, (0, 10)),  # range units are case-insensitive
        ("bytes=0-9,20-29", None, 100, None),  # several ranges: the whole, 200
        ("items=0-9", None, 100, None),
        ("bytes=9-0", None, 100, None),  # last before first: invalid, ignored
        ("bytes=-", None, 100, None),
        ("bytes=1²-5", None, 100, None),  # only ASCII digits
        ("bytes=" + "9" * 40 + "-", None, 100, None),  # no 40-digit integers
        ("bytes=0-9", TAG, 100, (0, 10)),  # If-Range: still this blob
        ("bytes=0-9", '"other"', 100, None),  # another version was cached: the whole
        ("bytes=0-9", "Tue, 01 Dec 2026 00:00:00 GMT", 100, None),  # a date: the whole
        ("bytes=0-9", f"W/{TAG}", 100, None),  # weak validators never match a range
    ],
)
def test_the_span_asked_for(
    header: str | None, if_range: str | None, size: int, span: tuple[int, int] | None
) -> None:
    assert requested_span(header, if_range, TAG, size) == span


@pytest.mark.parametrize(
    ("header", "size"),
    [("bytes=100-", 100), ("bytes=100-200", 100), ("bytes=-0", 100), ("bytes=-5", 0), ("bytes=0-", 0)],
)
def test_a_range_past_the_end_is_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        requested_span(header, None, TAG, size)


@given(st.text(max_size=40), st.integers(min_value=0, max_value=10**12))
def test_any_header_gives_a_span_inside_the_blob_or_the_whole_or_416(header: str, size: int) -> None:
    try:
        span = requested_span(header, None, TAG, size)
    except Unsatisfiable:
        return
    if span is not None:
        start, count = span
        assert 0 <= start < size and 1 <= count <= size - start


# -- the open files: descriptors bounded, never closed under a sender, never stale ----------


def closed(held: OpenFile) -> bool:
    return held.file.closed


def test_open_files_are_bounded_and_closed_only_once_no_one_sends_them(tmp_path: Path) -> None:
    files = OpenFiles(capacity=2)
    paths = [tmp_path / f"blob{n}" for n in range(4)]
    for n, path in enumerate(paths):
        path.write_bytes(b"\xff\xd8\xff" + bytes([n]) * 100)
    sending = files.acquire(paths[0])
    assert sending is not None and sending.size == 103 and sending.content_type == "image/jpeg"
    for path in paths[1:]:
        held = files.acquire(path)
        assert held is not None
        files.release(held)
    assert len(files) == 2
    assert not closed(sending)  # pushed out while a response still sends it
    assert os.pread(sending.file.fileno(), 4, 0) == b"\xff\xd8\xff\x00"
    files.release(sending)
    assert closed(sending)
    files.close()
    assert len(files) == 0


def test_a_removed_or_replaced_file_is_noticed_by_the_next_request(tmp_path: Path) -> None:
    files = OpenFiles()
    path = tmp_path / "blob"
    path.write_bytes(b"first")
    first = files.acquire(path)
    assert first is not None
    files.release(first)
    path.unlink()
    assert files.acquire(path) is None and closed(first)  # moved to another shard: 404
    path.write_bytes(b"second, longer")
    second = files.acquire(path)
    assert second is not None and second.size == len(b"second, longer")
    files.release(second)
    assert files.acquire(tmp_path / "blob" / "child") is None


@pytest.mark.parametrize(
    ("headers", "status", "body", "content_range"),
    [
        ({}, 200, b"0123456789", None),
        ({"Range": "bytes=2-4"}, 206, b"234", "bytes 2-4/10"),
        ({"Range": "bytes=-3"}, 206, b"789", "bytes 7-9/10"),
        ({"Range": "bytes=10-"}, 416, None, "bytes */10"),
        ({"Range": "bytes=2-4", "If-Range": '"other"'}, 200, b"0123456789", None),
    ],
)
def test_a_blob_from_memory_answers_ranges_too(
    headers: dict[str, str], status: int, body: bytes | None, content_range: str | None
) -> None:
    """Frontends of a replicated deployment hold originals in memory, from a storage node."""
    request = make_mocked_request("GET", "/v1/images/x", headers=headers)
    response = blob_response(request, OpenFiles(), b"0123456789", TAG, cache=True)
    assert response.status == status
    assert response.headers.get("Content-Range") == content_range
    if body is not None:
        assert isinstance(response, web.Response) and response.body == body
        assert response.headers["Accept-Ranges"] == "bytes" and response.headers["ETag"] == TAG
