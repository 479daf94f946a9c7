"""Draining a datacenter: its traffic weight goes to 0 in the HTTPRoute, the topology and
the status. The drained set lives in an annotation on the ImageServer, so a person can see
and undo it, it survives restarts, and the CLI and the automation share one path.
"""

from __future__ import annotations

from typing import Any

from imageserver_operator.adapters.kube import Kube
from imageserver_operator.core.annotations import DRAINED_ANNOTATION, drained_of


class DrainRefused(ValueError):
    """The drain would be unsafe or makes no sense; the message says why."""


def next_drained(current: frozenset[str], datacenters: list[str], dc: str, drain: bool) -> frozenset[str]:
    """Pure: the drained set after draining (or undraining) `dc`."""
    if dc not in datacenters:
        raise DrainRefused(f"{dc} is not one of this ImageServer's datacenters ({', '.join(datacenters)})")
    if not drain:
        return current - {dc}
    after = current | {dc}
    if not set(datacenters) - after:
        raise DrainRefused(f"refusing to drain {dc}: it is the last datacenter still serving traffic")
    return after


def set_drained(
    kube: Kube,
    namespace: str,
    name: str,
    dc: str,
    *,
    drain: bool,
    reason: str,
    announce: bool = True,
    attempts: int = 5,
) -> frozenset[str]:
    """Read, decide, write onto the version read: a drain the operator (or another person)
    wrote in between is never overwritten; on a conflict it is decided again."""
    for _ in range(attempts):
        body: dict[str, Any] = kube.get_imageserver(namespace, name)
        datacenters = [d["name"] for d in body.get("spec", {}).get("datacenters", [])]
        before = drained_of(body)
        after = next_drained(before, datacenters, dc, drain)
        if after == before:
            return after
        version = body["metadata"].get("resourceVersion")
        if (
            kube.annotate(namespace, name, {DRAINED_ANNOTATION: ",".join(sorted(after)) or None}, version)
            is None
        ):
            continue
        if announce:
            verb = "Drained" if drain else "Undrained"
            kube.event(body, "Warning" if drain else "Normal", verb, f"{verb} {dc}: {reason}")
        return after
    raise DrainRefused(f"{namespace}/{name} kept changing; tried {attempts} times, try again")
