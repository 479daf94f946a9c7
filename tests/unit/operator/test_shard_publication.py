"""New shards join the frontends' map only once their storage can take writes: a table of
the rule, and the properties every publication keeps."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imageserver_operator.api.models import ImageServerSpec
from imageserver_operator.core.render import Environment, Owner, render, storage_name
from imageserver_operator.core.shards import (
    Published,
    at_least,
    publication,
    published,
    ready_storage,
    unsure,
)
from imageserver_operator.core.status import Observation, compute

OWNER = Owner("shop", "web", "uid-1", generation=7)


def spec(
    shards: int, *, replicas: int = 1, quorum: int = 1, dcs: tuple[str, ...] = ("dc-a", "dc-b")
) -> ImageServerSpec:
    return ImageServerSpec.model_validate(
        {
            "version": "1.0.0",
            "shards": shards,
            "datacenters": [{"name": dc} for dc in dcs],
            "storage": {"replicas": replicas, "writeQuorum": quorum},
        }
    )


def all_ready(s: ImageServerSpec, pods: int, **late: tuple[int, ...]) -> dict[tuple[str, int], int]:
    """Every shard with `pods` ready pods, but the listed shards of a datacenter (dc_a=…) none."""
    return {
        (dc.name, i): 0 if i in late.get(dc.name.replace("-", "_"), ()) else pods
        for dc in s.datacenters
        for i in range(s.shards)
    }


CASES: list[
    tuple[
        str,
        ImageServerSpec,
        Published | None,
        dict[tuple[str, int], int],
        dict[str, int],
        int,
        dict[str, tuple[str, ...]],
    ]
] = [
    # (what, spec, live map, ready pods, shards listed, generation, waiting)
    ("a first map lists every shard", spec(2), None, {}, {"dc-a": 2, "dc-b": 2}, 7, {}),
    (
        "a new shard not ready yet waits; the map keeps its generation",
        spec(2),
        Published(6, {"dc-a": 1, "dc-b": 1}),
        all_ready(spec(2), 1, dc_a=(1,), dc_b=(1,)),
        {"dc-a": 1, "dc-b": 1},
        6,
        {"dc-a": ("s1",), "dc-b": ("s1",)},
    ),
    (
        "ready: it joins, at the spec's generation",
        spec(2),
        Published(6, {"dc-a": 1, "dc-b": 1}),
        all_ready(spec(2), 1),
        {"dc-a": 2, "dc-b": 2},
        7,
        {},
    ),
    (
        "one datacenter ready, the other not: each on its own, the generation waits for both",
        spec(2),
        Published(6, {"dc-a": 1, "dc-b": 1}),
        all_ready(spec(2), 1, dc_b=(1,)),
        {"dc-a": 2, "dc-b": 1},
        6,
        {"dc-b": ("s1",)},
    ),
    (
        "two new shards join together: one ready is not enough",
        spec(3),
        Published(6, {"dc-a": 1, "dc-b": 3}),
        all_ready(spec(3), 1, dc_a=(2,)),
        {"dc-a": 1, "dc-b": 3},
        6,
        {"dc-a": ("s2",)},
    ),
    (
        "ready means the write quorum: 1 of 3 replicas with quorum 2 waits",
        spec(2, replicas=3, quorum=2),
        Published(6, {"dc-a": 1, "dc-b": 1}),
        {("dc-a", 1): 1, ("dc-b", 1): 2, ("dc-a", 0): 0, ("dc-b", 0): 0},
        {"dc-a": 1, "dc-b": 2},
        6,
        {"dc-a": ("s1",)},
    ),
    (
        "a published shard stays even with no pod ready (taking it out would move its keys)",
        spec(2),
        Published(6, {"dc-a": 2, "dc-b": 2}),
        {},
        {"dc-a": 2, "dc-b": 2},
        7,
        {},
    ),
    (
        "a map listing more than the spec (edited by hand) is cut to it at once",
        spec(1),
        Published(6, {"dc-a": 3, "dc-b": 3}),
        {},
        {"dc-a": 1, "dc-b": 1},
        7,
        {},
    ),
    (
        "a new datacenter gets every shard (nothing to hash away from)",
        spec(2, dcs=("dc-a", "dc-b", "dc-c")),
        Published(6, {"dc-a": 2, "dc-b": 2}),
        {},
        {"dc-a": 2, "dc-b": 2, "dc-c": 2},
        7,
        {},
    ),
]


@pytest.mark.parametrize(
    ("what", "s", "live", "ready", "shards", "generation", "waiting"), CASES, ids=[c[0] for c in CASES]
)
def test_publication(
    what: str,
    s: ImageServerSpec,
    live: Published | None,
    ready: dict[tuple[str, int], int],
    shards: dict[str, int],
    generation: int,
    waiting: dict[str, tuple[str, ...]],
) -> None:
    got = publication(s, OWNER.generation, live, ready)
    assert (dict(got.shards), got.generation, dict(got.waiting)) == (shards, generation, waiting)


def topology_configmap(s: ImageServerSpec, env: Environment) -> dict[Any, Any]:
    objects = render(OWNER, s, env)
    config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "shop-topology")
    return {("v1", "ConfigMap", "shop-topology"): config}


@given(
    shards=st.integers(1, 6),
    before=st.integers(1, 6),
    replicas=st.integers(1, 3),
    ready=st.lists(st.integers(0, 3), min_size=12, max_size=12),
)
def test_what_the_frontends_get(shards: int, before: int, replicas: int, ready: list[int]) -> None:
    s = spec(shards, replicas=replicas, quorum=1)
    pods = {(dc.name, i): ready[d * 6 + i] for d, dc in enumerate(s.datacenters) for i in range(shards)}
    live = Published(6, {"dc-a": before, "dc-b": before})
    got = publication(s, OWNER.generation, live, pods)
    for dc in s.datacenters:
        listed = got.shards[dc.name]
        # Never fewer than what the spec keeps of the live map, never more than the spec.
        assert min(before, shards) <= listed <= shards
        # A shard the map did not list before is listed only with a write quorum ready.
        assert all(pods[(dc.name, i)] >= 1 for i in range(before, listed))
        # Everything ready: the spec's map.
        if all(pods[(dc.name, i)] >= 1 for i in range(shards)):
            assert listed == shards
    assert got.generation == (OWNER.generation if not got.waiting else live.generation)

    # The rendered ConfigMap lists exactly that, and reads back as the live map of the next pass.
    env = Environment(shards=got.shards, topology_generation=got.generation)
    again = published(OWNER, topology_configmap(s, env))
    assert again == Published(got.generation, dict(got.shards))


def test_a_map_that_cannot_be_read_is_no_map() -> None:
    for data in ({}, {"topology.json": "{"}, {"topology.json": json.dumps({"generation": 1})}):
        config = {"apiVersion": "v1", "kind": "ConfigMap", "data": data}
        assert published(OWNER, {("v1", "ConfigMap", "shop-topology"): config}) is None
    assert published(OWNER, {}) is None


def test_ready_pods_come_from_each_shards_statefulset() -> None:
    s = spec(2)
    children: dict[tuple[str, str, str], dict[str, Any]] = {
        ("apps/v1", "StatefulSet", storage_name(OWNER, "dc-a", 0)): {"status": {"readyReplicas": 1}},
        ("apps/v1", "StatefulSet", storage_name(OWNER, "dc-b", 1)): {"status": {}},
    }
    assert ready_storage(OWNER, s, children) == {
        ("dc-a", 0): 1,
        ("dc-a", 1): 0,
        ("dc-b", 0): 0,
        ("dc-b", 1): 0,
    }


def test_the_status_says_which_shards_wait_and_why() -> None:
    s = spec(2)
    seen = Observation(
        generation=7,
        spec=s,
        children={},
        drained=frozenset(),
        paused=False,
        waiting={"dc-b": ("s1",), "dc-a": ("s1", "s2")},
    )
    ready = next(c for c in compute(seen, {}, "t")["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"
    assert ready["message"].startswith(
        "dc-a: shards s1, s2 join the shard map once their storage is ready; "
        "dc-b: shards s1 join the shard map once their storage is ready; "
    )


def test_no_map_with_storage_present_is_read_from_the_api_before_anything_is_published() -> None:
    """After a restart the store may list StatefulSets before ConfigMaps: a missing map is a
    new one only for an ImageServer with no storage yet."""
    sts: dict[tuple[str, str, str], dict[str, Any]] = {
        ("apps/v1", "StatefulSet", storage_name(OWNER, "dc-a", 0)): {"status": {}}
    }
    assert unsure(None, sts)
    assert not unsure(None, {})
    assert not unsure(Published(1, {"dc-a": 1}), sts)


@pytest.mark.parametrize(
    ("live", "last", "expected"),
    [
        (None, None, None),
        (None, Published(2, {"dc-a": 2}), Published(2, {"dc-a": 2})),  # applied, not in the store yet
        (Published(2, {"dc-a": 1}), None, Published(2, {"dc-a": 1})),
        # The store is a pass behind what was applied: the shards once listed stay listed.
        (
            Published(2, {"dc-a": 1, "dc-b": 1}),
            Published(2, {"dc-a": 2, "dc-b": 1}),
            Published(2, {"dc-a": 2, "dc-b": 1}),
        ),
        (Published(1, {"dc-a": 1}), Published(2, {"dc-a": 2}), Published(2, {"dc-a": 2})),
        # Someone applied a newer map since (another leader): it wins.
        (Published(3, {"dc-a": 1}), Published(2, {"dc-a": 2}), Published(3, {"dc-a": 1})),
    ],
)
def test_the_map_last_applied_counts_until_the_store_has_it(
    live: Published | None, last: Published | None, expected: Published | None
) -> None:
    assert at_least(live, last) == expected
