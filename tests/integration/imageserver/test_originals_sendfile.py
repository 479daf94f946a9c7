"""Originals go out with sendfile from descriptors kept open, whole or one byte range (206),
from `serve` and from a storage node; clients that leave mid-file leave nothing open."""

from __future__ import annotations

import hashlib
import random
import socket
import time
from pathlib import Path

import pytest
import requests
import samples
from servers import WRITER, Processes, Server

PHOTO = samples.jpeg(2400, 1600, seed=11, quality=95)  # about 1 MB: several sendfile rounds
PHOTO_ID = hashlib.sha256(PHOTO).hexdigest()
TAG = f'"{PHOTO_ID}"'


@pytest.fixture
def server(imageserver: Processes, tmp_path: Path) -> Server:
    started = imageserver.start("serve", "--data", str(tmp_path / "data"))
    assert requests.post(f"{started.url}/v1/images", data=PHOTO, timeout=30).status_code == 201
    return started


def get(server: Server, method: str = "GET", **headers: str) -> requests.Response:
    return requests.request(method, f"{server.url}/v1/images/{PHOTO_ID}", headers=headers, timeout=10)


def open_descriptors(server: Server) -> int:
    return len(list(Path(f"/proc/{server.managed.pid}/fd").iterdir()))


def test_an_original_is_sent_whole_or_one_range_at_a_time(server: Server) -> None:
    whole = get(server)
    assert (whole.status_code, whole.content) == (200, PHOTO)
    assert whole.headers["Accept-Ranges"] == "bytes" and whole.headers["ETag"] == TAG
    assert whole.headers["Content-Type"] == "image/jpeg"
    size = len(PHOTO)
    for asked, first, last in [
        ("bytes=0-99", 0, 99),
        (f"bytes={size - 10}-", size - 10, size - 1),
        ("bytes=-1000", size - 1000, size - 1),
        (f"bytes=1000-{size * 2}", 1000, size - 1),
    ]:
        part = get(server, Range=asked)
        assert part.status_code == 206, (asked, part.status_code)
        assert part.content == PHOTO[first : last + 1]
        assert part.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert part.headers["ETag"] == TAG and part.headers["Cache-Control"].endswith("immutable")
    # A resumed download: If-Range names this original, so the rest of it comes.
    resumed = get(server, Range="bytes=500000-", **{"If-Range": TAG})
    assert resumed.status_code == 206 and PHOTO[:500000] + resumed.content == PHOTO
    # Not this version, several ranges, nonsense: the whole original, 200.
    for headers in (
        {"Range": "bytes=0-9", "If-Range": '"something-else"'},
        {"Range": "bytes=0-9,20-29"},
        {"Range": "bytes=zzz"},
    ):
        answer = get(server, **headers)
        assert (answer.status_code, answer.content) == (200, PHOTO), headers
    past = get(server, Range=f"bytes={size}-")
    assert past.status_code == 416 and past.headers["Content-Range"] == f"bytes */{size}"
    assert "past the end" in past.json()["error"]
    head = get(server, "HEAD", Range="bytes=0-99")  # Range is for GET only (RFC 9110 14.2)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(size) and not head.content
    assert get(server, **{"If-None-Match": TAG}).status_code == 304


def test_a_storage_node_serves_ranges_of_the_blobs_it_holds(imageserver: Processes, tmp_path: Path) -> None:
    storage = imageserver.start("storage", "--data", str(tmp_path / "s"), "--datacenter", "dc-a")
    blob = f"{storage.url}/v1/blobs/{PHOTO_ID}"
    put = requests.put(blob, data=PHOTO, headers=WRITER, timeout=10)
    assert put.status_code in (200, 201), put.text
    part = requests.get(blob, headers={"Range": "bytes=10-19"}, timeout=10)
    assert (part.status_code, part.content) == (206, PHOTO[10:20])
    assert requests.get(blob, timeout=10).content == PHOTO


def test_clients_that_leave_mid_file_leave_no_descriptor_open(server: Server) -> None:
    assert get(server).status_code == 200
    before = open_descriptors(server)
    host, port = "127.0.0.1", server.port
    for _ in range(100):
        with socket.create_connection((host, port), timeout=5) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.sendall(f"GET /v1/images/{PHOTO_ID} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            client.recv(1024)  # the headers and a little: then gone, the rest unsent
    deadline = time.monotonic() + 10
    while open_descriptors(server) > before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_descriptors(server) <= before + 2, (before, open_descriptors(server))
    assert get(server).content == PHOTO  # and the original still goes out whole


def test_a_slow_reader_gets_the_whole_blob_and_holds_up_no_one_else(
    imageserver: Processes, tmp_path: Path
) -> None:
    """A blob larger than the socket takes at once (12 MB, a storage node's original): the
    rest is sent as the client reads, and other clients are served meanwhile."""
    storage = imageserver.start("storage", "--data", str(tmp_path / "s"), "--datacenter", "dc-a")
    big = random.Random(5).randbytes(12 << 20)
    name = hashlib.sha256(big).hexdigest()
    assert requests.put(f"{storage.url}/v1/blobs/{name}", data=big, headers=WRITER, timeout=30).ok
    with socket.create_connection(("127.0.0.1", storage.port), timeout=10) as slow:
        slow.sendall(f"GET /v1/blobs/{name} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.5)  # reads nothing yet: the server's send buffer fills, the rest waits
        started = time.monotonic()
        small = requests.get(f"{storage.url}/v1/blobs/{name}", headers={"Range": "bytes=0-9"}, timeout=5)
        assert small.content == big[:10] and time.monotonic() - started < 2
        received = b""
        while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < len(big):
            chunk = slow.recv(1 << 20)
            assert chunk, "the connection closed early"
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == big
