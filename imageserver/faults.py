"""Game-day fault injection: fail a share of requests, or slow them down, on purpose.

Set at start-up (flags or environment, which is how a deliberately bad revision is made)
or at run time through the admin endpoints. Off unless asked for.

Failures are spread evenly, not drawn at random: a game day asks for a ratio and should see
that ratio, and a test of what the ratio causes (a burn rate, a rollback) should not depend
on how the dice fell over a few dozen requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Faults:
    error_ratio: float = 0.0
    latency_seconds: float = 0.0
    draining: bool = False
    _owed: dict[str, float] = field(default_factory=dict, repr=False)  # per route: failures due

    def validate(self) -> None:
        if not 0.0 <= self.error_ratio <= 1.0:
            raise ValueError("errorRatio must be between 0 and 1")
        if not 0.0 <= self.latency_seconds <= 60.0:
            raise ValueError("latencySeconds must be between 0 and 60")

    def should_fail(self, route: str = "") -> bool:
        """Error diffusion, per route: every request adds `error_ratio` to what its route
        owes, and a whole failure owed is given. Over any n consecutive requests of a route
        (at one ratio) the failures are n * ratio rounded down or up. Per route, because a
        client alternating two routes at ratio 0.5 would otherwise see one always fail."""
        if self.error_ratio <= 0:
            return False
        owed = self._owed.get(route, 0.0) + self.error_ratio
        failed = owed >= 1.0 - 1e-9  # 1e-9: ten times 0.1 is 0.9999999999999999
        self._owed[route] = owed - 1.0 if failed else owed
        return failed

    def describe(self) -> dict[str, object]:
        return {
            "errorRatio": self.error_ratio,
            "latencySeconds": self.latency_seconds,
            "draining": self.draining,
        }
