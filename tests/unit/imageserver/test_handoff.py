"""Hinted handoff: the owed-datacenters header, hints kept on disk across restarts, and delivery
that drops what the topology no longer names and backs off a datacenter that fails."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import aiohttp
import pytest
from aiohttp import test_utils
from hypothesis import given
from hypothesis import strategies as st

from imageserver import topology as topology_module
from imageserver.blobstore import BlobStore
from imageserver.faults import Faults
from imageserver.handoff import MAX_OWED, BadHint, Handoff, Hints, parse_owed
from imageserver.metrics import Metrics
from imageserver.storage_node import storage_app
from imageserver.topology import DATACENTER_NAME, TopologyWatcher

DATA = b"original image bytes"
ID = hashlib.sha256(DATA).hexdigest()
OTHER = hashlib.sha256(b"another image").hexdigest()
THIRD = hashlib.sha256(b"a third image").hexdigest()
REFUSED = "http://127.0.0.1:9"  # nothing listens on the discard port: refused at once


# --- parse_owed ------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", ",", " , ,, "])
def test_no_header_or_only_empty_pieces_owe_nothing(header: str | None) -> None:
    assert parse_owed(header) == frozenset()


def test_a_list_of_names_with_spaces_and_empty_pieces() -> None:
    assert parse_owed(" dc-b ,dc-c,, dc-b , 9") == frozenset({"dc-b", "dc-c", "9"})
    assert parse_owed("a" * 63) == frozenset({"a" * 63})
    assert len(parse_owed(",".join(f"dc-{i}" for i in range(MAX_OWED)))) == MAX_OWED


@pytest.mark.parametrize(
    "header",
    [
        "dc-\u00e4",  # dc-ä
        "\u0131",  # dotless i: lowercase, yet no ASCII letter
        "dc-b,\uff44\uff43",  # fullwidth "dc"
        "DC-B",
        "dc-b,Dc-c",
        "a" * 64,
        ",".join(f"dc-{i}" for i in range(MAX_OWED + 1)),
        "../x",
        "dc-b/../x",
        "..",
        ".",
        "dc-b/x",
        "-dc",
        "dc-",
        "dc_b",
        "dc.b",
        "dc b",
        "dc-b;dc-c",
        "dc-b\x00",
    ],
)
def test_hostile_headers_are_refused(header: str) -> None:
    with pytest.raises(BadHint):
        parse_owed(header)


NAME_LISTS = st.lists(st.from_regex(DATACENTER_NAME, fullmatch=True), max_size=MAX_OWED + 2).map(",".join)
NEAR_MISSES = st.text(alphabet="ab9-,. /_A\tä\u2028\x00", max_size=80)


@given(st.one_of(st.text(), NAME_LISTS, NEAR_MISSES))
def test_any_text_parses_to_valid_names_or_is_refused(header: str) -> None:
    try:
        names = parse_owed(header)
    except BadHint:
        return
    assert isinstance(names, frozenset)
    assert len(names) <= MAX_OWED
    assert all(DATACENTER_NAME.fullmatch(name) for name in names)


# --- Hints -----------------------------------------------------------------------------------


def test_owing_writes_a_file_that_a_restart_loads_again(tmp_path: Path) -> None:
    hints = Hints(tmp_path)
    hints.owe(ID, ["dc-b", "dc-c"])
    path = tmp_path / "hints" / ID
    assert json.loads(path.read_text())["owed"] == ["dc-b", "dc-c"]
    assert [p.name for p in hints.dir.iterdir()] == [ID]  # no temp file left behind
    restarted = Hints(tmp_path)
    assert restarted.pending == hints.pending
    assert restarted.pending[ID].owed == frozenset({"dc-b", "dc-c"})
    assert restarted.pending[ID].since == hints.pending[ID].since


def test_owing_nothing_writes_nothing(tmp_path: Path) -> None:
    hints = Hints(tmp_path)
    hints.owe(ID, [])
    assert hints.pending == {}
    assert not any(hints.dir.iterdir())


def test_owing_a_subset_again_does_not_rewrite(tmp_path: Path) -> None:
    hints = Hints(tmp_path)
    hints.owe(ID, {"dc-b", "dc-c"})
    before = (hints.dir / ID).stat()
    known = hints.pending[ID]
    hints.owe(ID, {"dc-b"})
    hints.owe(ID, {"dc-c", "dc-b"})
    after = (hints.dir / ID).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert hints.pending[ID] is known


def test_owing_more_merges_and_keeps_the_original_since(tmp_path: Path) -> None:
    hints = Hints(tmp_path)
    hints.owe(ID, {"dc-b"})
    since = hints.pending[ID].since
    hints.owe(ID, {"dc-c"})
    assert hints.pending[ID].owed == frozenset({"dc-b", "dc-c"})
    assert hints.pending[ID].since == since
    restarted = Hints(tmp_path)
    assert restarted.pending[ID].owed == frozenset({"dc-b", "dc-c"})
    assert restarted.pending[ID].since == since


def test_settling_one_datacenter_keeps_the_others_and_the_last_removes_the_file(tmp_path: Path) -> None:
    hints = Hints(tmp_path)
    hints.owe(ID, {"dc-b", "dc-c"})
    since = hints.pending[ID].since
    hints.settle(ID, "dc-b")
    assert hints.pending[ID].owed == frozenset({"dc-c"})
    assert hints.pending[ID].since == since
    assert Hints(tmp_path).pending[ID].owed == frozenset({"dc-c"})
    hints.settle(ID, "dc-b")  # settled twice: nothing changes
    hints.settle(OTHER, "dc-b")  # never owed: nothing changes
    assert hints.pending[ID].owed == frozenset({"dc-c"})
    hints.settle(ID, "dc-c")
    assert hints.pending == {}
    assert not (hints.dir / ID).exists()
    assert Hints(tmp_path).pending == {}


def test_counts_lag_and_work_by_datacenter(tmp_path: Path) -> None:
    hints = Hints(tmp_path)
    assert hints.owed() == 0
    assert hints.lag(1e9) == 0.0
    assert hints.by_datacenter() == {}
    hints.owe(OTHER, {"dc-b", "dc-c"})
    hints.owe(ID, {"dc-b"})
    hints.owe(THIRD, {"dc-c", "dc-d"})
    # Set the ages by hand: wall-clock ties would make "oldest first" untestable.
    hints.pending[OTHER].since = 1000.0
    hints.pending[ID].since = 500.0
    hints.pending[THIRD].since = 2000.0
    assert hints.owed() == 5
    assert hints.lag(2500.0) == 2000.0
    assert hints.lag(100.0) == 0.0  # a clock stepped back: never negative
    assert hints.by_datacenter() == {"dc-b": [ID, OTHER], "dc-c": [OTHER, THIRD], "dc-d": [THIRD]}
    hints.settle(ID, "dc-b")
    assert hints.owed() == 4
    assert hints.lag(2500.0) == 1500.0
    assert hints.by_datacenter()["dc-b"] == [OTHER]


def test_a_write_cut_short_by_a_crash_is_deleted_at_start(tmp_path: Path) -> None:
    hints = Hints(tmp_path)
    hints.owe(ID, {"dc-b"})
    leftover = hints.dir / f"{OTHER}.{'ab' * 16}"
    leftover.write_text('{"owed": ["dc-')  # what a kill -9 mid-write leaves
    restarted = Hints(tmp_path)
    assert not leftover.exists()
    assert set(restarted.pending) == {ID}
    assert [p.name for p in restarted.dir.iterdir()] == [ID]


@pytest.mark.parametrize(
    "body",
    [
        "not json at all",
        "[1, 2]",
        '{"since": 12.5}',
        '{"owed": ["dc-b"], "since": "yesterday"}',
        '{"owed": 7, "since": 12.5}',
    ],
)
def test_an_unreadable_hint_is_kept_aside_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, body: str
) -> None:
    Hints(tmp_path).owe(OTHER, {"dc-b"})
    (tmp_path / "hints" / ID).write_text(body)
    with caplog.at_level(logging.ERROR, logger="imageserver.handoff"):
        hints = Hints(tmp_path)
    assert set(hints.pending) == {OTHER}
    assert not (hints.dir / ID).exists()
    assert (hints.dir / f"{ID}.unreadable").read_text() == body
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "imageserver.handoff"]
    assert len(errors) == 1
    assert getattr(errors[0], "hint", None) == ID


def test_an_unreadable_hint_kept_aside_survives_the_next_restart(tmp_path: Path) -> None:
    (tmp_path / "hints").mkdir()
    (tmp_path / "hints" / ID).write_text("garbage")
    Hints(tmp_path)
    assert (tmp_path / "hints" / f"{ID}.unreadable").exists()
    Hints(tmp_path)  # a second restart
    assert (tmp_path / "hints" / f"{ID}.unreadable").exists()


# --- Handoff ---------------------------------------------------------------------------------


def watcher(tmp_path: Path, datacenters: dict[str, str]) -> TopologyWatcher:
    """A watcher holding a topology of one shard with one replica per datacenter."""
    watch = TopologyWatcher(tmp_path / "topology.json")
    watch.current = topology_module.parse(
        {
            "writeQuorum": 1,
            "datacenters": [
                {"name": name, "shards": [{"name": "s0", "replicas": [replica]}]}
                for name, replica in datacenters.items()
            ],
        }
    )
    return watch


def replications(metrics: Metrics, result: str) -> float | None:
    return metrics.registry.get_sample_value("imageserver_replications_total", {"result": result})


async def test_copies_owed_to_a_datacenter_that_left_the_topology_are_dropped_and_counted(
    tmp_path: Path,
) -> None:
    hints = Hints(tmp_path)
    hints.owe(ID, {"dc-gone"})
    hints.owe(OTHER, {"dc-gone"})
    metrics = Metrics("dc-a", "test", "storage")
    handoff = Handoff(
        hints, BlobStore(tmp_path), watcher(tmp_path, {"dc-a": REFUSED}), metrics, forget_after=0.0
    )
    await handoff.deliver_due()  # no session: no HTTP call may happen
    assert hints.pending == {}
    assert not any(hints.dir.iterdir())
    assert replications(metrics, "dropped") == 2.0
    assert replications(metrics, "retry") is None
    assert Hints(tmp_path).pending == {}


async def test_a_datacenter_missing_from_the_map_briefly_is_still_owed(tmp_path: Path) -> None:
    """A bad edit undone within `forget_after` (the settle time) costs no copy."""
    hints = Hints(tmp_path)
    hints.owe(ID, {"dc-b"})
    metrics = Metrics("dc-a", "test", "storage")
    handoff = Handoff(
        hints, BlobStore(tmp_path), watcher(tmp_path, {"dc-a": REFUSED}), metrics, forget_after=60.0
    )
    for _ in range(3):
        await handoff.deliver_due()
    assert hints.pending[ID].owed == frozenset({"dc-b"})
    assert replications(metrics, "dropped") is None


async def test_without_a_topology_nothing_is_delivered_or_dropped(tmp_path: Path) -> None:
    hints = Hints(tmp_path)
    hints.owe(ID, {"dc-gone"})
    metrics = Metrics("dc-a", "test", "storage")
    watch = TopologyWatcher(tmp_path / "topology.json")
    assert watch.current is None
    handoff = Handoff(hints, BlobStore(tmp_path), watch, metrics)
    await handoff.deliver_due()
    assert hints.pending[ID].owed == frozenset({"dc-gone"})
    assert replications(metrics, "dropped") is None


async def test_a_datacenter_that_fails_keeps_its_hints_and_is_backed_off(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    assert store.put(ID, DATA)
    hints = Hints(tmp_path)
    hints.owe(ID, {"dc-b"})
    metrics = Metrics("dc-a", "test", "storage")
    handoff = Handoff(
        hints, store, watcher(tmp_path, {"dc-a": REFUSED, "dc-b": REFUSED}), metrics, timeout=2.0
    )
    handoff._session = aiohttp.ClientSession()
    try:
        await handoff.deliver_due()
        assert hints.pending[ID].owed == frozenset({"dc-b"})
        assert replications(metrics, "retry") == 1.0
        assert replications(metrics, "ok") is None
        await handoff.deliver_due()  # at once: still backed off, no second attempt
        assert replications(metrics, "retry") == 1.0
        assert hints.pending[ID].owed == frozenset({"dc-b"})
    finally:
        await handoff._session.close()
    assert Hints(tmp_path).pending[ID].owed == frozenset({"dc-b"})


@pytest.mark.parametrize("owed", ['"dc-b"', "[]", '["DC B"]', "[1]"])
def test_a_hint_that_names_no_datacenter_properly_is_kept_aside(tmp_path: Path, owed: str) -> None:
    (tmp_path / "hints").mkdir()
    (tmp_path / "hints" / ID).write_text(f'{{"owed": {owed}, "since": 1}}')
    assert Hints(tmp_path).pending == {}
    assert (tmp_path / "hints" / f"{ID}.unreadable").exists()


async def test_an_image_that_fails_alone_waits_alone_and_the_others_are_delivered(tmp_path: Path) -> None:
    """A copy the remote refuses (here: larger than it takes) must not hold back the rest."""
    remote = BlobStore(tmp_path / "remote")
    app = storage_app(remote, Metrics("dc-b", "test", "storage"), Faults(), max_bytes=4096, admin_token=None)
    server = test_utils.TestServer(app)
    await server.start_server()
    try:
        here = BlobStore(tmp_path / "here")
        hints = Hints(here.root)
        small, large = b"small image", os.urandom(64 << 10)
        for data in (small, large):
            here.put(hashlib.sha256(data).hexdigest(), data)
            hints.owe(hashlib.sha256(data).hexdigest(), {"dc-b"})
        metrics = Metrics("dc-a", "test", "storage")
        url = str(server.make_url("")).rstrip("/")
        handoff = Handoff(hints, here, watcher(tmp_path, {"dc-a": REFUSED, "dc-b": url}), metrics)
        handoff._session = aiohttp.ClientSession()
        try:
            await handoff.deliver_due()
            await handoff.deliver_due()  # the datacenter answers: not backed off as a whole
        finally:
            await handoff._session.close()
        assert set(hints.pending) == {hashlib.sha256(large).hexdigest()}
        assert remote.read(hashlib.sha256(small).hexdigest()) == small
        assert replications(metrics, "retry") == 1.0  # the large one, once: it waits alone now
    finally:
        await server.close()
