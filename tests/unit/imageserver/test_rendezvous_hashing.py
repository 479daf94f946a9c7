"""Rendezvous hashing spreads ids evenly and moves few of them when a shard is added."""

from __future__ import annotations

import hashlib
from collections import Counter

from imageserver import hashing

KEYS = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20_000)]


def test_keys_spread_evenly_over_shards() -> None:
    shards = [f"s{i}" for i in range(8)]
    load = Counter(hashing.owner(key, shards) for key in KEYS)
    mean = len(KEYS) / len(shards)
    assert set(load) == set(shards)
    assert all(abs(count - mean) / mean < 0.06 for count in load.values()), load


def test_adding_a_shard_moves_about_one_in_n_plus_one_and_only_to_the_new_shard() -> None:
    for n in (2, 3, 5, 9):
        before = [f"s{i}" for i in range(n)]
        after = [*before, f"s{n}"]
        moved = [k for k in KEYS if hashing.owner(k, before) != hashing.owner(k, after)]
        assert abs(len(moved) / len(KEYS) - 1 / (n + 1)) < 0.015, (n, len(moved))
        assert {hashing.owner(k, after) for k in moved} == {f"s{n}"}
        # The previous owner is the moved key's second choice: readers fall back to it.
        assert all(hashing.ranked(k, after)[1] == hashing.owner(k, before) for k in moved)


def test_ranking_is_a_stable_permutation() -> None:
    shards = ["a", "b", "c", "d"]
    key = KEYS[0]
    assert sorted(hashing.ranked(key, shards)) == shards
    assert hashing.ranked(key, shards) == hashing.ranked(key, list(reversed(shards)))
    assert hashing.ranked(key, shards)[0] == hashing.owner(key, shards)
