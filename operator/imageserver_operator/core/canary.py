"""Canary analysis: is the new revision worse than the stable one? Pure.

A wave (the new revision in some datacenters) is compared with a live control (the stable
revision in the other datacenters) over the same interval, on two proportions: the error
ratio (5xx) and the slow ratio (slower than the latency SLO's threshold). Both come as counts
from Prometheus `increase()`, so they may be fractional, and slightly off after a counter
reset: they are clamped, never trusted to be integers. Missing data (no answer, NaN) is never
a pass nor a fail, nor is a canary without a control to compare with, unless the SLO's own
page rule sees its revision burning (`burned`).

Why Newcombe's hybrid score interval (method 10, built from two Wilson score intervals) for
the difference of the two ratios. Canary traffic is small and good revisions fail rarely, so
the counts that matter are a handful of errors out of a few hundred requests. There the Wald
interval (p ± z·√(p(1-p)/n)) collapses to zero width at 0 errors and undercovers badly near 0;
Wilson's score interval keeps its coverage at small counts, and Newcombe's combination of two
of them is among the best-behaved intervals for a difference of proportions (Newcombe 1998,
Statistics in Medicine 17:873). It is closed form and deterministic: no bootstrap, no
randomness, the same counts always give the same verdict, which a postmortem can recompute.

Why a non-inferiority design. A pass must be evidence that the canary is at most `margin`
worse than the control (the upper bound of the difference is within the margin), not the
absence of evidence that it is worse: with few requests every interval is wide, and "nothing
significant" would promote anything. A fail needs the lower bound above the margin. Between
the two the verdict is inconclusive, and the caller keeps baking (or times out).

Why the confidence is per look, and why 0.999 by default. The analysis runs every evaluation
interval on cumulative counts over a bake, so one wave is judged 20-60 times. Repeated looks
at one-sided 0.99 would abort a revision sitting exactly at the margin 6-8 % of the time over
20-60 looks (the repeated-significance effect of Armitage, McPherson and Rowe, 1969); at
0.999 (z = 3.09) it is 0.8-1.2 % per ratio (Monte Carlo of cumulative Gaussian looks: 0.75 %
at 20 looks, 0.88 % at 30, 1.17 % at 60), a Pocock-like constant boundary without having to
know the number of looks in advance. A good revision is not at the margin but at the
control's ratio, a margin away, so its false-abort rate is far smaller still
(tests/unit/operator/test_canary_verdict.py simulates 200 bakes of one at a 0.5 % baseline:
none aborted). The price is a few more requests before a verdict, which a clearly bad
revision pays in seconds.

The page-level rule. A canary whose own error ratio burns the budget at page level (14.4 x
the budget, what pages on-call) fails whatever the control does: a control that fails as
much is an outage for the SLO loop, not a reason to promote. It compares the lower Wilson
bound of the canary's error ratio with `page_error_ratio`, never the point estimate: 3 errors
in 200 requests is 1.5 %, above the 1.44 % of a 99.9 % objective, and happens to a good
revision at a 0.5 % baseline 8 % of the time. Because that bound is already a conclusion at
`confidence`, it is the one check allowed before `min_requests`: 10 errors out of the first
12 requests do not need 188 more to be judged.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

Outcome = Literal["pass", "fail", "inconclusive"]
Reason = Literal[
    "Passed",
    "ErrorRatioAboveControl",
    "SlowRatioAboveControl",
    "PageLevelBurn",
    "TooFewRequests",
    "NotYetConclusive",
    "NoControl",
    "NoData",
]
NOTHING_KNOWN = (-1.0, 1.0)  # every difference of two ratios lies in it


@dataclass(frozen=True)
class Counts:
    """Over the same interval, from Prometheus increase()."""

    requests: float
    errors: float  # 5xx
    slow: float  # slower than the latency SLO threshold


@dataclass(frozen=True)
class Analysis:
    """From spec.rollout and spec.slo; all ratios as fractions (0.01 = 1 %)."""

    min_requests: int  # per side, before any verdict
    error_margin: float  # canary error ratio may exceed the control's by this much (absolute)
    slow_margin: float  # same for the slow ratio
    page_error_ratio: float  # 14.4 x (1 - availability objective): fails at once, see the module
    confidence: float = 0.999  # one-sided, per look: see the module docstring

    def __post_init__(self) -> None:
        if not 0.5 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0.5, 1), not {self.confidence}")
        if self.error_margin < 0 or self.slow_margin < 0:
            raise ValueError("margins must not be negative")


EMPTY = Counts(0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: Reason  # one CamelCase word, for an Event's reason and a condition's
    canary: Counts  # as judged: clamped, EMPTY when missing
    control: Counts
    error_bounds: tuple[float, float]  # bounds of canary - control error ratio, one-sided each
    slow_bounds: tuple[float, float]
    analysis: Analysis  # what it was judged against, for the message
    # The canary's own burn rates, when the SLO loop saw them at page level (burned()).
    burn: str = ""

    def message(self) -> str:
        """One line for an Event, Slack or a postmortem."""
        a, c, k = self.analysis, self.canary, self.control
        head = f"{self.outcome}: "
        if self.reason == "NoData":
            return head + "no canary data"
        if self.reason == "NoControl":
            return head + f"no control to compare with; canary {_share(c.errors, c.requests, 'errors')}"
        if self.reason == "PageLevelBurn" and self.burn:
            return head + (
                f"canary burns the error budget at page level ({self.burn}); canary "
                f"{_share(c.errors, c.requests, 'errors')}, control {_share(k.errors, k.requests)}"
            )
        if self.reason == "PageLevelBurn":
            low = wilson(c.errors, c.requests, z_of(a.confidence))[0]
            return head + (
                f"canary {_share(c.errors, c.requests, 'errors')}, at least {_pct(low)} % at "
                f"{_level(a.confidence)} %, above the page-level {_pct(a.page_error_ratio)} %; "
                f"control {_share(k.errors, k.requests)}"
            )
        if self.reason == "TooFewRequests":
            return head + (
                f"too few requests (canary {_count(c.requests)}, control {_count(k.requests)}; "
                f"{a.min_requests} needed on each side); canary {_share(c.errors, c.requests, 'errors')} "
                f"vs control {_share(k.errors, k.requests)}"
            )
        errors, slow = _comparison(self, "errors"), _comparison(self, "slow")
        if self.reason == "ErrorRatioAboveControl":
            return head + errors
        if self.reason == "SlowRatioAboveControl":
            return head + slow
        return head + f"{errors}; {slow}"


def burned(verdict: Verdict, burn: str) -> Verdict:
    """The verdict once the canary revision's own burn rates (the SLO's multiwindow rule, on
    every request it served) are at page level: fail, whatever the counts or the control say.
    The same rule pages on-call for any revision; the counts only catch up with it a cycle
    or two later (they accumulate a short-window rate), and a wave must not outlast a page."""
    if not burn or verdict.outcome == "fail":
        return verdict
    return dataclasses.replace(verdict, outcome="fail", reason="PageLevelBurn", burn=burn)


def z_of(confidence: float) -> float:
    return NormalDist().inv_cdf(confidence)


def wilson(successes: float, trials: float, z: float) -> tuple[float, float]:
    """Wilson's score interval for successes/trials, each bound one-sided at z."""
    if trials <= 0:
        return (0.0, 1.0)
    # The textbook form multiplied through by n: no n² to overflow on tiny extrapolated counts.
    z2 = z * z
    center = (successes + z2 / 2) / (trials + z2)
    spread = max(0.0, successes * (trials - successes) / trials)  # 0 when successes > trials
    half = z * math.sqrt(spread + z2 / 4) / (trials + z2)
    return (max(0.0, center - half), min(1.0, center + half))


def difference(
    canary_bad: float, canary_total: float, control_bad: float, control_total: float, z: float
) -> tuple[float, float]:
    """Newcombe's hybrid score interval (method 10) for canary ratio - control ratio."""
    if canary_total <= 0 or control_total <= 0:
        return NOTHING_KNOWN
    p1, p2 = canary_bad / canary_total, control_bad / control_total
    l1, u1 = wilson(canary_bad, canary_total, z)
    l2, u2 = wilson(control_bad, control_total, z)
    lower = p1 - p2 - math.hypot(p1 - l1, u2 - p2)
    upper = p1 - p2 + math.hypot(u1 - p1, p2 - l2)
    return (lower, upper)


def judge(canary: Counts | None, control: Counts | None, analysis: Analysis) -> Verdict:
    """pass, fail or inconclusive for one look at cumulative counts of a wave and its control."""

    def verdict(
        outcome: Outcome,
        reason: Reason,
        ours: Counts = EMPTY,
        theirs: Counts = EMPTY,
        *,
        error_bounds: tuple[float, float] = NOTHING_KNOWN,
        slow_bounds: tuple[float, float] = NOTHING_KNOWN,
    ) -> Verdict:
        return Verdict(outcome, reason, ours, theirs, error_bounds, slow_bounds, analysis)

    if canary is None or not _finite(canary):
        return verdict("inconclusive", "NoData")
    ours = _clamped(canary)
    if control is None or not _finite(control):
        return verdict("inconclusive", "NoControl", ours)
    theirs = _clamped(control)
    if theirs.requests == 0:
        return verdict("inconclusive", "NoControl", ours, theirs)

    z = z_of(analysis.confidence)
    error_bounds = difference(ours.errors, ours.requests, theirs.errors, theirs.requests, z)
    slow_bounds = difference(ours.slow, ours.requests, theirs.slow, theirs.requests, z)

    def said(outcome: Outcome, reason: Reason) -> Verdict:
        return verdict(outcome, reason, ours, theirs, error_bounds=error_bounds, slow_bounds=slow_bounds)

    # Before min_requests too: the lower bound is already a conclusion (module docstring).
    if wilson(ours.errors, ours.requests, z)[0] > analysis.page_error_ratio:
        return said("fail", "PageLevelBurn")
    if min(ours.requests, theirs.requests) < analysis.min_requests:
        return said("inconclusive", "TooFewRequests")
    if error_bounds[0] > analysis.error_margin:
        return said("fail", "ErrorRatioAboveControl")
    if slow_bounds[0] > analysis.slow_margin:
        return said("fail", "SlowRatioAboveControl")
    if error_bounds[1] <= analysis.error_margin and slow_bounds[1] <= analysis.slow_margin:
        return said("pass", "Passed")
    return said("inconclusive", "NotYetConclusive")


def _finite(counts: Counts) -> bool:
    return all(math.isfinite(v) for v in (counts.requests, counts.errors, counts.slow))


def _clamped(counts: Counts) -> Counts:
    # increase() extrapolates, and a counter reset can leave a part slightly above the whole.
    requests = max(0.0, counts.requests)
    return Counts(
        requests,
        min(max(0.0, counts.errors), requests),
        min(max(0.0, counts.slow), requests),
    )


def _comparison(v: Verdict, kind: Literal["errors", "slow"]) -> str:
    if kind == "errors":
        ours, theirs, margin = v.canary.errors, v.control.errors, v.analysis.error_margin
        lower, upper = v.error_bounds
    else:
        ours, theirs, margin = v.canary.slow, v.control.slow, v.analysis.slow_margin
        lower, upper = v.slow_bounds
    if lower > margin:
        where = "above"
    elif upper <= margin:
        where = "within"
    else:
        where = "not yet clear of"
    c, k = v.canary.requests, v.control.requests
    gap = (ours / c if c else 0.0) - (theirs / k if k else 0.0)
    return (
        f"canary {_share(ours, c, kind)} vs control {_share(theirs, k)}; "
        f"difference {_pts(gap)} pts, {_level(v.analysis.confidence)} % interval "
        f"[{_pts(lower)}, {_pts(upper)}] {where} the {_pts(margin)} pt margin"
    )


def _share(part: float, whole: float, kind: str = "") -> str:
    ratio = f" ({_pct(part / whole)} %)" if whole else ""
    return f"{_count(part)}/{_count(whole)}{' ' + kind if kind else ''}{ratio}"


def _count(value: float) -> str:
    # increase() extrapolates: show whole counts as such, fractional ones as they came.
    return f"{value:.0f}" if abs(value - round(value)) < 0.05 else f"{value:.1f}"


def _pct(ratio: float) -> str:
    percent = 100 * ratio
    return f"{percent:.1f}" if abs(percent) >= 10 else f"{percent:.2f}"


def _level(confidence: float) -> str:
    return f"{100 * confidence:g}"


def _pts(ratio: float) -> str:
    text = f"{100 * ratio:.1f}"
    return "0.0" if text == "-0.0" else text
