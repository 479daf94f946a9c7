"""Game-day fault injection: fail a share of requests, or slow them down, on purpose.

Set at start-up (flags or environment, which is how a deliberately bad revision is made)
or at run time through the admin endpoints. Off unless asked for.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Faults:
    error_ratio: float = 0.0
    latency_seconds: float = 0.0
    draining: bool = False
    chance: Callable[[], float] = field(default=random.random, repr=False)

    def validate(self) -> None:
        if not 0.0 <= self.error_ratio <= 1.0:
            raise ValueError("errorRatio must be between 0 and 1")
        if not 0.0 <= self.latency_seconds <= 60.0:
            raise ValueError("latencySeconds must be between 0 and 60")

    def should_fail(self) -> bool:
        return self.error_ratio > 0 and self.chance() < self.error_ratio

    def describe(self) -> dict[str, object]:
        return {
            "errorRatio": self.error_ratio,
            "latencySeconds": self.latency_seconds,
            "draining": self.draining,
        }
