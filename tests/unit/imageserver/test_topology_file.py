"""The shard map file: parsed strictly, reloaded on change, the last good one kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from imageserver import topology
from imageserver.topology import TopologyError, TopologyWatcher


def document(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "generation": 1,
        "writeQuorum": 2,
        "crossDatacenter": "async",
        "datacenters": [
            {
                "name": name,
                "weight": 100,
                "shards": [
                    {"name": f"s{i}", "replicas": [f"http://127.0.0.1:{port + i * 2 + r}" for r in range(2)]}
                    for i in range(3)
                ],
            }
            for name, port in (("dc-a", 9000), ("dc-b", 9100))
        ],
    }
    doc.update(overrides)
    return doc


def test_a_valid_map_parses() -> None:
    parsed = topology.parse(document())
    assert [dc.name for dc in parsed.datacenters] == ["dc-a", "dc-b"]
    assert parsed.write_quorum == 2
    dc_a = parsed.datacenter("dc-a")
    assert dc_a is not None
    assert dc_a.shard("s1") is not None
    assert dc_a.shard("s1").replicas == ("http://127.0.0.1:9002", "http://127.0.0.1:9003")  # type: ignore[union-attr]
    assert [dc.name for dc in parsed.others("dc-a")] == ["dc-b"]
    assert len(dc_a.shards_for("ab" * 32)) == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"datacenters": []}, "datacenters: must be a non-empty list"),
        ({"writeQuorum": 3}, "writeQuorum: 3 is more than the 2 replicas of shard s0 in dc-a"),
        ({"writeQuorum": 0}, "writeQuorum: must be an integer ≥ 1"),
        ({"crossDatacenter": "eventually"}, "crossDatacenter: must be 'async' or 'sync'"),
    ],
)
def test_bad_maps_say_what_is_wrong(change: dict[str, Any], message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        topology.parse(document(**change))


def test_nested_mistakes_name_their_place() -> None:
    doc = document()
    doc["datacenters"][1]["shards"][0]["replicas"] = ["ftp://x"]
    with pytest.raises(TopologyError, match=r"datacenters\[1\]\.shards\[0\]\.replicas: 'ftp://x' is not"):
        topology.parse(doc)
    doc = document()
    doc["datacenters"][1]["name"] = "dc-a"
    with pytest.raises(TopologyError, match="datacenters: names must be unique"):
        topology.parse(doc)


def test_the_watcher_takes_changes_and_keeps_the_last_good_map(tmp_path: Path) -> None:
    path = tmp_path / "topology.json"
    watcher = TopologyWatcher(path)

    def generation() -> int | None:
        return watcher.current.generation if watcher.current else None

    assert not watcher.refresh()  # not there yet
    assert generation() is None
    path.write_text(json.dumps(document()))
    assert watcher.refresh()
    assert generation() == 1
    assert not watcher.refresh()  # unchanged
    path.write_text(json.dumps(document(generation=2)))
    assert watcher.refresh()
    assert generation() == 2
    path.write_text("{ not json")
    assert not watcher.refresh()
    assert generation() == 2
