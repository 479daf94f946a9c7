"""Where a read looks, from the topology alone: the local owner shard first, then the local
datacenter's other shards, then every shard elsewhere; every shard once, so a miss costs a
bounded number of parallel rounds. And when enough replicas of a shard said "not here" for
it to be ruled out: a 404 is evidence, an error is not."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imageserver import hashing
from imageserver.replication import _Evidence, read_rounds, repair_candidates
from imageserver.topology import Datacenter, Shard, Topology

IDS = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(50)]


def datacenter(
    name: str, shards: int, *, replicas: int = 3, weight: int = 100, drained: bool = False
) -> Datacenter:
    return Datacenter(
        name,
        tuple(
            Shard(f"s{i}", tuple(f"http://{name}-s{i}-r{r}:8080" for r in range(replicas)))
            for i in range(shards)
        ),
        weight,
        drained,
    )


def names(places: list[tuple[Datacenter, Shard]]) -> list[tuple[str, str]]:
    return [(dc.name, shard.name) for dc, shard in places]


@pytest.mark.parametrize("image_id", IDS[:20])
def test_two_datacenters_are_read_in_three_rounds_local_owner_local_rest_then_remote(image_id: str) -> None:
    here, there = datacenter("dc-a", 3), datacenter("dc-b", 3)
    rounds = read_rounds(Topology((here, there), write_quorum=2), "dc-a", image_id)
    owner = hashing.owner(image_id, ["s0", "s1", "s2"])
    ranked = hashing.ranked(image_id, ["s0", "s1", "s2"])
    assert (
        [names(r) for r in rounds]
        == [
            [("dc-a", owner)],  # the rendezvous owner alone (its replicas are hedged)
            [("dc-a", name) for name in ranked[1:]],  # the fallbacks, in the order the id prefers
            [("dc-b", owner)],  # the owner in the other datacenter: where an upload there lands
        ]
    )


@pytest.mark.parametrize(
    ("layout", "expected_rounds"),
    [
        pytest.param({"dc-a": 1}, 1, id="one shard, one datacenter"),
        pytest.param({"dc-a": 3}, 2, id="no other datacenter"),
        pytest.param({"dc-a": 1, "dc-b": 2}, 2, id="no other local shard"),
        pytest.param({"dc-a": 2, "dc-b": 1}, 3, id="all three"),
    ],
)
def test_rounds_with_nothing_to_ask_are_left_out(layout: dict[str, int], expected_rounds: int) -> None:
    topology = Topology(tuple(datacenter(name, n) for name, n in layout.items()), write_quorum=1)
    rounds = read_rounds(topology, "dc-a", IDS[0])
    assert len(rounds) == expected_rounds
    assert all(rounds)


def test_other_datacenters_are_asked_heaviest_first_and_drained_ones_last() -> None:
    topology = Topology(
        (
            datacenter("dc-a", 1),
            datacenter("dc-drained", 1, weight=500, drained=True),
            datacenter("dc-light", 1, weight=10),
            datacenter("dc-heavy", 1, weight=200),
            datacenter("dc-b", 1, weight=10),  # as light as dc-light: by name
        ),
        write_quorum=1,
    )
    remote = read_rounds(topology, "dc-a", IDS[0])[-1]
    assert [dc.name for dc, _ in remote] == ["dc-heavy", "dc-b", "dc-light", "dc-drained"]


@st.composite
def topologies(draw: st.DrawFn) -> tuple[Topology, str]:
    count = draw(st.integers(1, 4))
    dcs = tuple(
        datacenter(
            f"dc-{i}",
            draw(st.integers(1, 5)),
            replicas=draw(st.integers(1, 3)),
            weight=draw(st.integers(0, 3)),
            drained=draw(st.booleans()),
        )
        for i in range(count)
    )
    return Topology(dcs, write_quorum=1), f"dc-{draw(st.integers(0, count - 1))}"


@given(topologies(), st.text(min_size=1))
def test_every_local_shard_and_each_remote_owner_is_asked_exactly_once(
    case: tuple[Topology, str], image_id: str
) -> None:
    topology, local = case
    rounds = read_rounds(topology, local, image_id)
    asked = [place for places in rounds for place in names(places)]
    expected = [
        (dc.name, shard.name)
        for dc in topology.datacenters
        for shard in (dc.shards if dc.name == local else dc.shards_for(image_id)[:1])
    ]
    assert sorted(asked) == sorted(expected)  # none missed, none twice
    here = topology.datacenter(local)
    assert here is not None
    assert names(rounds[0]) == [(local, hashing.owner(image_id, [s.name for s in here.shards]))]
    # The local datacenter is finished before any other is asked.
    local_rounds = 1 if len(here.shards) == 1 else 2
    assert all(dc.name == local for r in rounds[:local_rounds] for dc, _ in r)
    assert all(dc.name != local for r in rounds[local_rounds:] for dc, _ in r)
    assert len(rounds) <= 3


# -- ruling a shard out ----------------------------------------------------------------------

DC = datacenter("dc-a", 2)
SHARD, OTHER = DC.shards
REMOTE = datacenter("dc-b", 2)


def said(evidence: _Evidence, statuses: list[int], *, dc: Datacenter = DC, shard: Shard = SHARD) -> _Evidence:
    """Each replica of the shard in turn answered with the next status."""
    for base, status in zip(shard.replicas, statuses, strict=False):
        evidence.record(dc, shard, base, status)
    return evidence


@pytest.mark.parametrize(
    ("write_quorum", "statuses", "ruled_out"),
    [
        # R=3, W=2: an acknowledged write is on 2 replicas, so 2 misses mean it is not there.
        pytest.param(2, [404], False, id="W2 one 404"),
        pytest.param(2, [404, 404], True, id="W2 two 404s"),
        pytest.param(2, [404, 0, 404], True, id="W2 two 404s and an error"),
        # W=1: the one copy may be on any replica, all three must say no.
        pytest.param(1, [404, 404], False, id="W1 two 404s"),
        pytest.param(1, [404, 404, 404], True, id="W1 three 404s"),
        pytest.param(3, [404], True, id="W3 one 404"),
        # Errors say nothing about the blob.
        pytest.param(2, [0, 0, 0], False, id="unreachable"),
        pytest.param(2, [500, 503, 0], False, id="server errors"),
        pytest.param(1, [404, 404, 500], False, id="W1 one error"),
        pytest.param(2, [], False, id="nobody asked"),
    ],
)
def test_a_shard_is_ruled_out_by_r_minus_w_plus_one_404s_and_never_by_errors(
    write_quorum: int, statuses: list[int], ruled_out: bool
) -> None:
    evidence = said(_Evidence(write_quorum), statuses)
    assert evidence.rules_out(DC, SHARD) is ruled_out


def test_misses_count_only_for_the_shard_and_datacenter_that_answered() -> None:
    evidence = said(_Evidence(1), [404, 404, 404])
    assert evidence.rules_out(DC, SHARD)
    assert not evidence.rules_out(DC, OTHER)
    # Same shard name in another datacenter: a different shard.
    assert not evidence.rules_out(REMOTE, REMOTE.shards[0])


def test_the_replicas_that_answered_404_are_remembered_for_read_repair() -> None:
    evidence = said(_Evidence(2), [404, 500, 404])
    assert evidence.absent_at == {SHARD.replicas[0], SHARD.replicas[2]}


# -- read repair ---------------------------------------------------------------------------

R0, R1, R2 = SHARD.replicas


@pytest.mark.parametrize(
    ("statuses", "held", "missing", "unsure"),
    [
        # A hedged read: the first replica answered, the others were never asked.
        pytest.param([], R0, [], [R1, R2], id="hedged hit"),
        pytest.param([404], R1, [R0], [R2], id="a miss, then a hit"),
        # Asked, but no answer that counts: slow past the hedge (cancelled), refused, 5xx.
        pytest.param([0, 500], R2, [], [R0, R1], id="errors say nothing"),
        pytest.param([404, 404], None, [R0, R1], [R2], id="found on another shard"),
    ],
)
def test_read_repair_writes_back_every_replica_that_may_lack_the_blob_but_the_one_that_had_it(
    statuses: list[int], held: str | None, missing: list[str], unsure: list[str]
) -> None:
    evidence = said(_Evidence(2), statuses)
    if held is not None:
        evidence.held_at.add(held)
    assert repair_candidates([(DC, SHARD)], evidence) == (missing, unsure)
