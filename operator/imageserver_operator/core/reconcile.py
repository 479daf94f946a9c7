"""What a reconcile must write: the desired objects the live ones do not already match.

An object is up to date when every field we render is present, with the same value, in the
live object; the API server adds defaults and status, which we leave alone. Applying only
what differs is what makes a resync with nothing changed write nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from imageserver_operator.api.models import ImageServerSpec
from imageserver_operator.core.render import Manifest, key

MAX_VARIANT_SIDE = 4096  # the frontend refuses larger variant sizes


def is_subset(desired: Any, live: Any) -> bool:
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(k in live and is_subset(v, live[k]) for k, v in desired.items())
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(is_subset(d, v) for d, v in zip(desired, live, strict=True))
        )
    return bool(desired == live)


def plan(desired: list[Manifest], live: Mapping[tuple[str, str, str], Manifest]) -> list[Manifest]:
    """The desired objects that are missing or differ from their live copy, in order."""
    return [obj for obj in desired if not is_subset(obj, live.get(key(obj)))]


def stale(desired: list[Manifest], live: Mapping[tuple[str, str, str], Manifest]) -> list[Manifest]:
    """Owned objects no longer rendered (a removed datacenter, an API no longer used)."""
    wanted = {key(obj) for obj in desired}
    return [obj for k, obj in sorted(live.items()) if k not in wanted]


def semantic_problems(spec: ImageServerSpec) -> list[str]:
    """What the schema cannot see but would make a broken service."""
    problems = []
    if all(dc.weight == 0 for dc in spec.datacenters):
        problems.append("every datacenter has weight 0, so no traffic would be served")
    for size in spec.variants:
        width, height = (int(n) for n in size.split("x"))
        if not (1 <= width <= MAX_VARIANT_SIDE and 1 <= height <= MAX_VARIANT_SIDE):
            problems.append(f"variant {size} is outside 1x1 … {MAX_VARIANT_SIDE}x{MAX_VARIANT_SIDE}")
    return problems
