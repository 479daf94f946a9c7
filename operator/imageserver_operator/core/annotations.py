"""The ImageServer annotations the operator reads: where people and automation share state."""

from __future__ import annotations

from typing import Any

from imageserver_operator.api.models import GROUP

DRAINED_ANNOTATION = f"{GROUP}/drained"  # comma-separated datacenters, written by drain/undrain
PAUSED_ANNOTATION = f"{GROUP}/paused"  # "true" stops all automation


def drained_of(body: dict[str, Any]) -> frozenset[str]:
    raw = (body["metadata"].get("annotations") or {}).get(DRAINED_ANNOTATION, "")
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def paused_of(body: dict[str, Any]) -> bool:
    return bool((body["metadata"].get("annotations") or {}).get(PAUSED_ANNOTATION, "").lower() == "true")
