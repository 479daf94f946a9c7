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
    _owed: float = field(default=0.0, repr=False)  # failures due but not yet given

    def validate(self) -> None:
        if not 0.0 <= self.error_ratio <= 1.0:
            raise ValueError("errorRatio must be between 0 and 1")
        if not 0.0 <= self.latency_seconds <= 60.0:
            raise ValueError("latencySeconds must be between 0 and 60")

    def should_fail(self) -> bool:
        """Error diffusion: every request adds `error_ratio` to what is owed, and a whole
        failure owed is given. Over any n consecutive requests (at one ratio) the failures are
        n * ratio rounded down or up."""
        if self.error_ratio <= 0:
            return False
        self._owed += self.error_ratio
        if self._owed >= 1.0 - 1e-9:  # 1e-9: ten times 0.1 is 0.9999999999999999
            self._owed -= 1.0
            return True
        return False

    def describe(self) -> dict[str, object]:
        return {
            "errorRatio": self.error_ratio,
            "latencySeconds": self.latency_seconds,
            "draining": self.draining,
        }
