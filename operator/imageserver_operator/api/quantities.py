"""Kubernetes quantities ("250m", "10Gi", "2M") as numbers, and bytes as people read them."""

from __future__ import annotations

import math
import re

SUFFIXES = {
    "": 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(" + "|".join(s for s in SUFFIXES if s) + r")?$")


def parse(text: str) -> float:
    """The value of a quantity; ValueError for anything else (the CRD's pattern refuses it first)."""
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise ValueError(f"not a quantity: {text!r}")
    return float(match.group(1)) * SUFFIXES[match.group(2) or ""]


def show_bytes(count: float) -> str:
    """Binary units, three significant figures: 2.05 MiB, 37.3 TiB."""
    for unit, size in (("EiB", 2.0**60), ("PiB", 2.0**50), ("TiB", 2.0**40), ("GiB", 2.0**30)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    for unit, size in (("MiB", 2.0**20), ("KiB", 2.0**10)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{count:.0f} B"


def show_rate(bits_per_second: float) -> str:
    """A network rate in decimal units, as links are sold: 1.6 Gbit/s."""
    for unit, size in (("Tbit/s", 1e12), ("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bits_per_second >= size:
            return f"{bits_per_second / size:.3g} {unit}"
    return f"{bits_per_second:.0f} bit/s"


def volume_size(count: float) -> str:
    """The smallest whole-Gi (or Ti, past 1000 Gi) quantity that holds `count` bytes."""
    gib = math.ceil(count / 2.0**30)
    if gib > 1000:
        return f"{math.ceil(count / 2.0**40)}Ti"
    return f"{max(gib, 1)}Gi"
