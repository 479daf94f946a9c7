"""Game-day fault injection: fail a share of requests, or slow them down, on purpose.

Set at start-up (flags or environment, which is how a deliberately bad revision is made)
or at run time through the admin endpoints. Off unless asked for.

Failures follow the ratio closely, not the dice: a game day asks for a ratio and should see
that ratio, and a test of what the ratio causes (a burn rate, a rollback) should not depend
on how the dice fell over a few dozen requests. Nor are they periodic: at 0.5, strictly every
other request failing would fail every upload that makes three storage writes in a row.
Dithered error diffusion gives both: any n consecutive requests of a route fail n * ratio
within 3, in an order that varies (reproducibly: the dither is seeded by the route and
`seed`). Each process starts at its own phase, drawn from its dither: a process that starts
mid game day fails its share from its first requests (not after 1/ratio of them), and the
replicas of a shard, seeded apart (by default with the host name: the pod's), do not fail
the same write together.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field


@dataclass
class Faults:
    error_ratio: float = 0.0
    latency_seconds: float = 0.0
    draining: bool = False
    seed: str = ""
    _routes: dict[str, _Diffusion] = field(default_factory=dict, repr=False)

    def validate(self) -> None:
        if not 0.0 <= self.error_ratio <= 1.0:
            raise ValueError("errorRatio must be between 0 and 1")
        if not 0.0 <= self.latency_seconds <= 60.0:
            raise ValueError("latencySeconds must be between 0 and 60")

    def should_fail(self, route: str = "") -> bool:
        if self.error_ratio <= 0:
            return False
        if self.error_ratio >= 1:
            return True
        diffusion = self._routes.get(route)
        if diffusion is None:
            dither = random.Random(zlib.crc32(f"{self.seed}/{route}".encode()))
            diffusion = self._routes[route] = _Diffusion(dither, owed=dither.random())
        return diffusion.next(self.error_ratio)

    def describe(self) -> dict[str, object]:
        return {
            "errorRatio": self.error_ratio,
            "latencySeconds": self.latency_seconds,
            "draining": self.draining,
        }


@dataclass
class _Diffusion:
    """Every request adds the ratio to what is owed; a failure is given once what is owed
    passes a threshold drawn anew from [0, 2). What is owed stays within [-1, 2), so
    failures over any run of requests are within 3 of run * ratio (2.7 at worst, measured),
    and at 0.5 three requests in a row all succeed 6.6 % of the time (12.5 % if independent,
    never with a threshold of 1: strict alternation)."""

    dither: random.Random
    owed: float = 0.0
    threshold: float = 1.0

    def next(self, ratio: float) -> bool:
        self.owed += ratio
        if self.owed < self.threshold:
            return False
        self.owed -= 1.0
        self.threshold = 2.0 * self.dither.random()
        return True
