"""Rendezvous (highest random weight) hashing: which shard holds an image.

Every (key, shard) pair gets a pseudo-random score and the key lives on the highest-scoring
shard. Adding a shard moves only the keys that the new shard now wins (about 1/(N+1) of
them), and each moved key's previous owner is its second choice, so readers can fall back to
it until the key is repaired onto the new owner.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence


def score(key: str, node: str) -> int:
    digest = hashlib.blake2b(f"{node}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def ranked(key: str, nodes: Iterable[str]) -> list[str]:
    """Nodes in the order a key prefers them: owner first, then its fallbacks."""
    return sorted(nodes, key=lambda node: (score(key, node), node), reverse=True)


def owner(key: str, nodes: Sequence[str]) -> str:
    if not nodes:
        raise ValueError("no nodes to place the key on")
    return max(nodes, key=lambda node: (score(key, node), node))
