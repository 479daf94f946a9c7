"""Canary verdicts: the interval arithmetic against published values, the rules as a table,
the promises as properties, and whole bakes simulated with seeded traffic: a good revision is
never aborted, a bad one always is, at its first conclusive look."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from statistics import NormalDist

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from imageserver_operator.core.canary import (
    Analysis,
    Counts,
    Outcome,
    Reason,
    Verdict,
    difference,
    judge,
    wilson,
)

# The issue's defaults on a 99.9 % availability objective: the page-level burn is 14.4 x 0.1 %.
ISSUE = Analysis(min_requests=200, error_margin=0.01, slow_margin=0.01, page_error_ratio=0.0144)
NO_PAGE = replace(ISSUE, page_error_ratio=1.0)
Z95 = 1.959963984540054  # one-sided 0.975, each bound of a two-sided 95 % interval
TOWARD_PASS = {"fail": 0, "inconclusive": 1, "pass": 2}
GOOD = Counts(4000, 20, 40)  # 0.5 % errors, 1 % slow


# Newcombe, "Two-sided confidence intervals for the single proportion" and "Interval
# estimation for the difference between independent proportions", Statistics in Medicine
# 17 (1998) 857 and 873: the score method (3) and the hybrid score method (10) at 95 %.
@pytest.mark.parametrize(
    ("successes", "trials", "lower", "upper"),
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_bounds_match_newcombes_table(successes: int, trials: int, lower: float, upper: float) -> None:
    assert wilson(successes, trials, Z95) == pytest.approx((lower, upper), abs=5e-5)


@pytest.mark.parametrize(
    ("a", "m", "b", "n", "lower", "upper"),
    [(56, 70, 48, 80, 0.0524, 0.3339), (9, 10, 3, 10, 0.1705, 0.8090), (5, 56, 0, 29, -0.0381, 0.1926)],
)
def test_difference_bounds_match_newcombes_method_10(
    a: int, m: int, b: int, n: int, lower: float, upper: float
) -> None:
    assert difference(a, m, b, n, Z95) == pytest.approx((lower, upper), abs=5e-5)


def test_wilson_by_hand_at_the_default_confidence() -> None:
    # 1 error in 200 at z = 3.0902: centre (0.005 + z²/400) / (1 + z²/200), half-width
    # z·√(0.005·0.995/200 + z²/160000) / (1 + z²/200).
    z = 3.090232306167813
    centre = (0.005 + z * z / 400) / (1 + z * z / 200)
    half = z * math.sqrt(0.005 * 0.995 / 200 + z * z / 160000) / (1 + z * z / 200)
    assert wilson(1, 200, z) == pytest.approx((centre - half, centre + half))
    assert wilson(1, 200, z) == pytest.approx((0.00044, 0.05468), abs=5e-6)


@pytest.mark.parametrize(
    ("canary", "control", "outcome", "reason"),
    [
        (None, GOOD, "inconclusive", "NoData"),
        (Counts(math.nan, 1, 1), GOOD, "inconclusive", "NoData"),
        (GOOD, None, "inconclusive", "NoControl"),
        (GOOD, Counts(100, math.inf, 0), "inconclusive", "NoControl"),
        (GOOD, Counts(0, 0, 0), "inconclusive", "NoControl"),
        (GOOD, Counts(-0.3, 0, 0), "inconclusive", "NoControl"),  # a reset's leftover is no traffic
        (Counts(150, 1, 1), GOOD, "inconclusive", "TooFewRequests"),
        (GOOD, Counts(150, 0, 0), "inconclusive", "TooFewRequests"),
        (Counts(150, 0, 0), Counts(150, 75, 75), "inconclusive", "TooFewRequests"),
        (Counts(12, 10, 0), Counts(40, 0, 0), "fail", "PageLevelBurn"),  # conclusive before 200
        (Counts(200, 60, 2), Counts(800, 4, 8), "fail", "PageLevelBurn"),
        (Counts(4000, 20, 200), GOOD, "fail", "SlowRatioAboveControl"),
        (GOOD, GOOD, "pass", "Passed"),
        (Counts(4000.4, 19.6, 40.2), Counts(15999.1, 80.3, 160.7), "pass", "Passed"),
        (Counts(200, 1, 2), Counts(800, 4, 8), "inconclusive", "NotYetConclusive"),
        (Counts(600, 12, 6), Counts(2400, 12, 24), "inconclusive", "NotYetConclusive"),
    ],
)
def test_rules(canary: Counts | None, control: Counts | None, outcome: Outcome, reason: Reason) -> None:
    verdict = judge(canary, control, ISSUE)
    assert (verdict.outcome, verdict.reason) == (outcome, reason)


def test_error_ratio_above_control_under_the_page_level() -> None:
    # 3 % against 0.5 %: well under a 99 % objective's page level (14.4 %), over the margin.
    verdict = judge(Counts(4000, 120, 40), GOOD, replace(ISSUE, page_error_ratio=0.144))
    assert (verdict.outcome, verdict.reason) == ("fail", "ErrorRatioAboveControl")
    assert verdict.error_bounds[0] > 0.01


def test_odd_counts_after_a_reset_are_clamped() -> None:
    verdict = judge(Counts(210.4, 250, -3), Counts(800, 4, 900), NO_PAGE)
    assert verdict.canary == Counts(210.4, 210.4, 0.0)
    assert verdict.control == Counts(800, 4, 800)


def test_a_failure_message_has_the_counts_ratios_interval_and_margin() -> None:
    verdict = judge(Counts(40, 12, 0), Counts(400, 1, 4), replace(NO_PAGE, min_requests=20))
    text = verdict.message()
    assert text.startswith("fail: canary 12/40 errors (30.0 %) vs control 1/400 (0.25 %); difference 29.8")
    assert "99.9 % interval [" in text
    assert text.endswith("above the 1.0 pt margin")
    assert "\n" not in text


@pytest.mark.parametrize(
    ("canary", "control", "says"),
    [
        (None, GOOD, "inconclusive: no canary data"),
        (GOOD, None, "inconclusive: no control to compare with"),
        (Counts(12, 10, 0), GOOD, "above the page-level 1.44 %"),
        (Counts(40, 1, 0), GOOD, "too few requests (canary 40, control 4000; 200 needed on each side)"),
        (GOOD, GOOD, "within the 1.0 pt margin"),
        (Counts(200, 1, 2), Counts(800, 4, 8), "not yet clear of the 1.0 pt margin"),
    ],
)
def test_every_reason_reads_as_one_line(canary: Counts | None, control: Counts | None, says: str) -> None:
    text = judge(canary, control, ISSUE).message()
    assert says in text
    assert "\n" not in text


def test_analysis_refuses_a_confidence_that_is_no_bound() -> None:
    with pytest.raises(ValueError, match="confidence"):
        Analysis(200, 0.01, 0.01, 0.0144, confidence=0.4)
    with pytest.raises(ValueError, match="margins"):
        Analysis(200, -0.01, 0.01, 0.0144)


# --- properties --------------------------------------------------------------------------

amounts = st.floats(min_value=-5, max_value=1e6, allow_nan=False, allow_infinity=False)
finite_counts = st.builds(Counts, amounts, amounts, amounts)
broken = st.sampled_from([math.nan, math.inf, -math.inf])
missing = st.one_of(
    st.none(),
    st.builds(Counts, broken, amounts, amounts),
    st.builds(Counts, amounts, broken, amounts),
    st.builds(Counts, amounts, amounts, broken),
)
analyses = st.builds(
    Analysis,
    min_requests=st.integers(0, 1000),
    error_margin=st.floats(0, 0.1),
    slow_margin=st.floats(0, 0.1),
    page_error_ratio=st.floats(0.001, 1.0),
    confidence=st.sampled_from([0.95, 0.99, 0.999, 0.9999]),
)


@settings(max_examples=300)
@given(missing, st.one_of(missing, finite_counts), analyses)
def test_missing_canary_data_is_never_a_verdict(
    canary: Counts | None, control: Counts | None, analysis: Analysis
) -> None:
    verdict = judge(canary, control, analysis)
    assert (verdict.outcome, verdict.reason) == ("inconclusive", "NoData")


@settings(max_examples=300)
@given(finite_counts, st.one_of(missing, st.builds(Counts, st.floats(-5, 0), amounts, amounts)), analyses)
def test_missing_or_silent_control_is_never_a_verdict(
    canary: Counts, control: Counts | None, analysis: Analysis
) -> None:
    verdict = judge(canary, control, analysis)
    assert (verdict.outcome, verdict.reason) == ("inconclusive", "NoControl")


@settings(max_examples=500)
@given(finite_counts, finite_counts, st.floats(0, 1e6), analyses)
def test_more_canary_errors_never_move_toward_pass(
    canary: Counts, control: Counts, extra: float, analysis: Analysis
) -> None:
    worse = replace(canary, errors=max(canary.errors, 0.0) + extra)
    before, after = judge(canary, control, analysis), judge(worse, control, analysis)
    assert TOWARD_PASS[after.outcome] <= TOWARD_PASS[before.outcome]
    assert after.error_bounds[0] >= before.error_bounds[0] - 1e-12


@settings(max_examples=300)
@given(
    st.integers(1, 10_000),
    st.floats(0, 1),
    st.floats(0, 1),
    st.floats(0.001, 0.1),
    st.sampled_from([0.99, 0.999, 0.9999]),
)
def test_a_canary_like_its_control_never_fails_and_passes_with_enough_requests(
    requests: int, error_ratio: float, slow_ratio: float, margin: float, confidence: float
) -> None:
    analysis = Analysis(requests, margin, margin, page_error_ratio=1.0, confidence=confidence)
    scale = 1.0
    while True:
        same = Counts(requests * scale, error_ratio * requests * scale, slow_ratio * requests * scale)
        verdict = judge(same, same, analysis)
        assert verdict.outcome != "fail"
        if verdict.outcome == "pass":
            break
        scale *= 10
        assert scale <= 1e9, "no pass with a billion times the requests"
    # A page-level burn is the one failure an identical control allows: the canary's own.
    with_page = judge(same, same, replace(analysis, page_error_ratio=0.0144))
    assert with_page.outcome != "fail" or with_page.reason == "PageLevelBurn"


@st.composite
def low_traffic(draw: st.DrawFn) -> tuple[Counts, Counts, Analysis]:
    """One side at least, or both, short of min_requests; the control not silent."""
    analysis = draw(analyses.filter(lambda a: a.min_requests > 0))
    short = st.floats(0, analysis.min_requests, exclude_max=True)
    canary, control = draw(finite_counts), draw(finite_counts)
    which = draw(st.sampled_from(["canary", "control", "both"]))
    if which != "control":
        canary = replace(canary, requests=draw(short))
    if which != "canary":
        control = replace(control, requests=draw(short.filter(lambda r: r > 0)))
    return canary, control, analysis


@settings(max_examples=300)
@given(low_traffic())
def test_below_min_requests_only_page_level_burn_is_a_verdict(case: tuple[Counts, Counts, Analysis]) -> None:
    canary, control, analysis = case
    assume(control.requests > 0)
    verdict = judge(canary, control, analysis)
    if verdict.outcome == "fail":
        assert verdict.reason == "PageLevelBurn"
        z = NormalDist().inv_cdf(analysis.confidence)
        lower = wilson(verdict.canary.errors, verdict.canary.requests, z)[0]
        assert lower > analysis.page_error_ratio
    else:
        assert (verdict.outcome, verdict.reason) == ("inconclusive", "TooFewRequests")


# --- whole bakes ---------------------------------------------------------------------------

LOOK = 10  # seconds between evaluations
BAKE = 300  # a 5-minute bake: 30 looks
CANARY_RATE = 20  # requests a second on the wave; the control takes 4x that


def binomial(rng: random.Random, trials: int, p: float) -> int:
    """Exact Binomial draw by geometric gaps between successes: O(successes), not O(trials)."""
    if p <= 0:
        return 0
    log_q = math.log1p(-p)
    successes, at = 0, 0
    while True:
        at += int(math.log(1.0 - rng.random()) / log_q) + 1
        if at > trials:
            return successes
        successes += 1


def bake(
    seed: int, canary_errors: float, analysis: Analysis, canary_rate: int = CANARY_RATE
) -> list[Verdict]:
    """Every look of one bake, on cumulative counts."""
    rng = random.Random(seed)
    canary, control = [0, 0, 0], [0, 0, 0]
    verdicts = []
    for _ in range(BAKE // LOOK):
        for side, rate, p_error in (
            (canary, canary_rate, canary_errors),
            (control, 4 * canary_rate, 0.005),
        ):
            n = rate * LOOK
            side[0] += n
            side[1] += binomial(rng, n, p_error)
            side[2] += binomial(rng, n, 0.01)
        verdicts.append(judge(Counts(*map(float, canary)), Counts(*map(float, control)), analysis))
    return verdicts


def test_noise_a_good_revision_at_a_half_percent_baseline_is_never_aborted() -> None:
    bakes = [bake(seed, 0.005, ISSUE) for seed in range(200)]
    failed = [seed for seed, looks in enumerate(bakes) if any(v.outcome == "fail" for v in looks)]
    assert failed == [], [bakes[s][-1].message() for s in failed[:3]]
    passed = sum(looks[-1].outcome == "pass" for looks in bakes)
    assert passed >= 0.9 * len(bakes)


def test_a_revision_failing_30_percent_is_aborted_at_its_first_conclusive_look() -> None:
    for seed in range(200):
        looks = bake(seed, 0.30, ISSUE)
        first = next(i for i, v in enumerate(looks) if v.canary.requests >= ISSUE.min_requests)
        assert looks[first].outcome == "fail" or any(v.outcome == "fail" for v in looks[:first])


def test_on_low_traffic_the_page_level_rule_aborts_before_min_requests() -> None:
    # 2 requests a second on the wave: 100 s before 200 requests; 30 % errors are proven sooner.
    for seed in range(200):
        looks = bake(seed, 0.30, ISSUE, canary_rate=2)
        at, failed = next((i, v) for i, v in enumerate(looks) if v.outcome == "fail")
        assert failed.reason == "PageLevelBurn"
        assert failed.canary.requests < ISSUE.min_requests
        assert all(v.outcome == "inconclusive" for v in looks[:at])
