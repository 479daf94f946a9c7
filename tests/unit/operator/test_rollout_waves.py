"""Progressive delivery: the waves, what each datacenter runs, the rollout's steps cycle by
cycle (with request counts judged against a live control), what people command, the incident
engine that aborts a failing wave, and the promises as a property."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imageserver_operator.api.durations import stamp
from imageserver_operator.api.models import ImageServerSpec, RequestCounts, RolloutStatus
from imageserver_operator.core import engine
from imageserver_operator.core.annotations import PAUSED_ANNOTATION
from imageserver_operator.core.engine import Subject, judge
from imageserver_operator.core.messages import IncidentMessage
from imageserver_operator.core.policy import Observation, burning_revisions
from imageserver_operator.core.rollout import (
    COUNT_GAP,
    Rates,
    Refused,
    Step,
    aborted,
    command,
    rolled_back,
    serving,
    step,
    waves,
)

NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)
DCS = ("dc-a", "dc-b", "dc-c")
EVERY = 10  # seconds between two cycles
CALM = {"5m": 0.2, "30m": 0.2, "1h": 0.2, "2h": 0.2, "6h": 0.2, "1d": 0.2, "3d": 0.2}


def at(seconds: float) -> datetime.datetime:
    return NOW + datetime.timedelta(seconds=seconds)


def make_spec(
    version: str = "1.1.0",
    dcs: Sequence[str] = DCS,
    wave_list: list[list[str]] | None = None,
    **rollout: Any,
) -> ImageServerSpec:
    body: dict[str, Any] = {"version": version, "datacenters": [{"name": n} for n in dcs]}
    if wave_list is not None:
        rollout = {**rollout, "waves": wave_list}
    if rollout:
        body["rollout"] = rollout
    return ImageServerSpec.model_validate(body)


def settled(version: str = "1.0.0", **changes: Any) -> RolloutStatus:
    """A rollout of `version` that reached every datacenter (of the default two waves)."""
    return RolloutStatus(target=version, stable=version, phase="Complete", promoted=2, **changes)


def progressing(
    target: str = "1.1.0", stable: str = "1.0.0", promoted: int = 1, **changes: Any
) -> RolloutStatus:
    return RolloutStatus(
        target=target,
        stable=stable,
        phase="Progressing",
        promoted=promoted,
        started_at=stamp(NOW),
        wave_since=stamp(NOW),
        counted_at=stamp(NOW),
        **changes,
    )


def per_second(rps: float, error_ratio: float, slow_ratio: float = 0.01) -> dict[str, float]:
    return {"requests": rps, "errors": rps * error_ratio, "slow": rps * slow_ratio}


def spread(by_revision: dict[str, dict[str, float]], dcs: Sequence[str] = DCS) -> Rates:
    """Rates by "datacenter/revision": each datacenter reports each revision at these rates
    (only the ones a datacenter runs are counted, on the side it is on)."""
    return {f"{dc}/{revision}": rates for dc in dcs for revision, rates in by_revision.items()}


# Per datacenter: the canary's wave is one datacenter at 20 req/s, the control two at 20 each.
GOOD: Rates = spread({"1.1.0": per_second(20, 0.005), "1.0.0": per_second(20, 0.005)})
BAD: Rates = spread({"1.1.0": per_second(20, 0.30), "1.0.0": per_second(20, 0.005)})
QUIET: Rates = spread({"1.1.0": per_second(0.1, 0.005), "1.0.0": per_second(20, 0.005)})
# Too few requests for the counts to say anything yet, but failing enough (a quarter of them,
# 15 in the 5 minutes of the short window) for the revision's page-level burn to be evident.
SMOLDERING: Rates = spread({"1.1.0": per_second(0.2, 0.25), "1.0.0": per_second(20, 0.005)})


def on_target(spec: ImageServerSpec, rollout: RolloutStatus) -> int:
    return sum(1 for revision in serving(spec, rollout).values() if revision == rollout.target)


# -- waves ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dcs", "given_waves", "expected"),
    [
        (DCS, [], [["dc-a"], ["dc-b", "dc-c"]]),
        (("dc-a", "dc-b"), [], [["dc-a"], ["dc-b"]]),
        (("dc-a",), [], [["dc-a"]]),
        (DCS, [["dc-b"], ["dc-a", "dc-c"]], [["dc-b"], ["dc-a", "dc-c"]]),
        (DCS, [["dc-c"], ["dc-a"], ["dc-b"]], [["dc-c"], ["dc-a"], ["dc-b"]]),
        (DCS, [["dc-x"], ["dc-a"], ["dc-b", "dc-y", "dc-c"]], [["dc-a"], ["dc-b", "dc-c"]]),
        (DCS, [["dc-x"], ["dc-y"]], [["dc-a"], ["dc-b", "dc-c"]]),
        (DCS, [["dc-a"], ["dc-b"]], [["dc-a"], ["dc-b", "dc-c"]]),
        (DCS, [["dc-c"]], [["dc-c", "dc-a", "dc-b"]]),
    ],
    ids=[
        "default",
        "default-two",
        "single-datacenter",
        "explicit",
        "explicit-three",
        "unknown-names-dropped",
        "only-unknown-names-is-the-default",
        "unnamed-joins-last",
        "unnamed-join-the-only-wave",
    ],
)
def test_waves(dcs: Sequence[str], given_waves: list[list[str]], expected: list[list[str]]) -> None:
    """Default: the first datacenter alone, then the rest (one datacenter: one wave). Names
    that are not datacenters are dropped; datacenters no wave names join the last wave."""
    assert waves(make_spec(dcs=dcs, wave_list=given_waves)) == expected


# -- serving -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "rollout", "expected"),
    [
        ("1.1.0", None, {"dc-a": "1.1.0", "dc-b": "1.1.0", "dc-c": "1.1.0"}),
        ("1.1.0", progressing(), {"dc-a": "1.1.0", "dc-b": "1.0.0", "dc-c": "1.0.0"}),
        ("1.1.0", progressing(promoted=2), {"dc-a": "1.1.0", "dc-b": "1.1.0", "dc-c": "1.1.0"}),
        (
            "1.1.0",
            progressing().model_copy(update={"phase": "Paused"}),
            {"dc-a": "1.1.0", "dc-b": "1.0.0", "dc-c": "1.0.0"},
        ),
        (
            "1.1.0",
            RolloutStatus(target="1.1.0", stable="1.0.0", phase="Complete", promoted=2),
            {"dc-a": "1.1.0", "dc-b": "1.1.0", "dc-c": "1.1.0"},
        ),
        (
            "1.1.0",
            aborted(progressing(), "bad"),
            {"dc-a": "1.0.0", "dc-b": "1.0.0", "dc-c": "1.0.0"},
        ),
        # The loop has not taken the new version up yet: what ran keeps running.
        ("1.2.0", settled("1.1.0"), {"dc-a": "1.1.0", "dc-b": "1.1.0", "dc-c": "1.1.0"}),
        ("1.2.0", progressing(), {"dc-a": "1.1.0", "dc-b": "1.0.0", "dc-c": "1.0.0"}),
    ],
    ids=[
        "no-rollout-spec-everywhere",
        "progressing-first-wave",
        "progressing-all-waves",
        "paused-first-wave",
        "complete",
        "aborted",
        "not-started-after-complete",
        "not-started-mid-rollout",
    ],
)
def test_serving(version: str, rollout: RolloutStatus | None, expected: dict[str, str]) -> None:
    """Every datacenter runs the target once its wave is promoted, the stable version until
    then and after an abort; a spec.version the loop has not started changes nothing."""
    assert serving(make_spec(version), rollout) == expected


# -- step, one cycle at a time ---------------------------------------------------------------


def test_first_sight_is_complete_at_the_spec_version() -> None:
    """Nothing known: what the spec asks for runs everywhere, with nothing to return to."""
    moved = step(make_spec(), None, GOOD, NOW)
    assert (moved.rollout.phase, moved.rollout.target, moved.rollout.stable) == ("Complete", "1.1.0", "1.1.0")
    assert moved.rollout.promoted == 2 and moved.notes == () and moved.verdict is None


def test_first_sight_is_seeded_from_the_legacy_revisions() -> None:
    """An ImageServer that ran before rollouts were kept: its previous revision stays the one
    a rollback returns to."""
    since = "2026-11-28T11:50:00Z"
    revisions = {"current": "1.1.0", "previous": "1.0.0", "since": since}
    moved = step(make_spec(), None, GOOD, NOW, revisions=revisions)
    assert (moved.rollout.phase, moved.rollout.target, moved.rollout.stable) == ("Complete", "1.1.0", "1.0.0")
    assert moved.rollout.started_at == since and moved.rollout.promoted == 2


def test_a_new_version_starts_with_the_first_wave() -> None:
    moved = step(make_spec("1.1.0"), settled("1.0.0"), GOOD, NOW)
    assert (moved.rollout.phase, moved.rollout.promoted) == ("Progressing", 1)
    assert (moved.rollout.target, moved.rollout.stable) == ("1.1.0", "1.0.0")
    assert moved.rollout.counted_at == stamp(NOW) and moved.rollout.canary == RequestCounts()
    assert [n.reason for n in moved.notes] == ["RolloutStarted"]
    assert "dc-a" in moved.notes[0].message and "1.0.0" in moved.notes[0].message


@pytest.mark.parametrize(
    ("spec", "gated"),
    [(make_spec(dcs=("dc-a",)), True), (make_spec(), False)],
    ids=["single-datacenter", "not-gated"],
)
def test_a_new_version_goes_everywhere_at_once_without_a_control_or_a_gate(
    spec: ImageServerSpec, gated: bool
) -> None:
    """One wave has nothing to be compared with; remediation not auto does not gate it."""
    moved = step(spec, settled("1.0.0"), GOOD, NOW, gated=gated)
    assert (moved.rollout.phase, moved.rollout.target, moved.rollout.stable) == ("Complete", "1.1.0", "1.0.0")
    assert set(serving(spec, moved.rollout).values()) == {"1.1.0"}
    assert [n.reason for n in moved.notes] == ["RolloutSucceeded"]


@pytest.mark.parametrize("rollout", [settled("1.0.0"), progressing()], ids=["new-version", "mid-rollout"])
def test_hold_moves_nothing(rollout: RolloutStatus) -> None:
    """The automation paused: no new rollout, no count, no promotion."""
    moved = step(make_spec("1.1.0"), rollout, GOOD, at(3600), hold=True)
    assert moved == Step(rollout)


def test_a_rejected_version_applied_again_stays_aborted() -> None:
    """A GitOps tool applying the same spec again does not restart the rollout it aborted."""
    spec = make_spec("1.1.0")
    rejected = aborted(progressing(), "canary failed")
    for cycle in range(1, 10):
        moved = step(spec, rejected, GOOD, at(cycle * EVERY))
        assert moved.rollout == rejected and moved.notes == ()
    assert set(serving(spec, rejected).values()) == {"1.0.0"}


def test_a_rejected_version_named_again_after_another_stays_aborted() -> None:
    """1.1.0 aborted, 1.2.0 started, then 1.1.0 named again: not rolled out, every datacenter
    back on the stable version."""
    rejected = aborted(progressing(), "canary failed")
    second = step(make_spec("1.2.0"), rejected, GOOD, at(60)).rollout
    assert (second.phase, second.target, second.stable, second.rejected) == (
        "Progressing",
        "1.2.0",
        "1.0.0",
        ["1.1.0"],
    )
    again = step(make_spec("1.1.0"), second, GOOD, at(120)).rollout
    assert (again.phase, again.target, again.promoted) == ("Aborted", "1.1.0", 0)
    assert "promote it" in again.verdict
    assert set(serving(make_spec("1.1.0"), again).values()) == {"1.0.0"}


def test_a_rejected_version_named_again_after_a_complete_one_keeps_what_runs() -> None:
    """1.1.0 was rejected; 1.2.0 then reached every datacenter. Naming 1.1.0 again must not
    roll it out, and must not silently take every datacenter back to 1.0.0 either: 1.2.0 is
    what runs, and what an aborted rollout's `stable` should be."""
    done = RolloutStatus(target="1.2.0", stable="1.0.0", phase="Complete", promoted=2, rejected=["1.1.0"])
    spec = make_spec("1.1.0")
    assert set(serving(spec, done).values()) == {"1.2.0"}
    held = step(spec, done, GOOD, NOW).rollout
    assert held.phase == "Aborted"
    assert set(serving(spec, held).values()) == {"1.2.0"}


@pytest.mark.parametrize(
    "rollout",
    [progressing(), progressing().model_copy(update={"phase": "Paused"}), aborted(progressing(), "bad")],
    ids=["progressing", "paused", "aborted"],
)
def test_the_spec_set_back_to_the_stable_version_completes(rollout: RolloutStatus) -> None:
    moved = step(make_spec("1.0.0"), rollout, GOOD, at(60))
    assert (moved.rollout.phase, moved.rollout.target, moved.rollout.stable) == ("Complete", "1.0.0", "1.0.0")
    assert set(serving(make_spec("1.0.0"), moved.rollout).values()) == {"1.0.0"}
    assert moved.rollout.rejected == rollout.rejected  # an abort is still remembered


# -- whole bakes, cycle by cycle -------------------------------------------------------------


def drive(
    spec: ImageServerSpec,
    rollout: RolloutStatus,
    rates: Rates | None,
    start: float,
    seconds: float,
) -> list[tuple[float, RolloutStatus, Step]]:
    """Cycles every EVERY seconds after `start`, up to `start + seconds`: (time, before, step)."""
    seen: list[tuple[float, RolloutStatus, Step]] = []
    t = start
    while t < start + seconds:
        t += EVERY
        moved = step(spec, rollout, rates, at(t))
        seen.append((t, rollout, moved))
        rollout = moved.rollout
    return seen


def test_a_good_revision_is_promoted_wave_by_wave_after_each_bake() -> None:
    """Promoted only with a pass verdict and once the wave has baked; counts start over with
    each wave; the last wave completes it, within the bakes and one interval."""
    spec = make_spec(wave_list=[["dc-a"], ["dc-b"], ["dc-c"]])
    started = step(spec, settled("1.0.0"), GOOD, NOW).rollout
    cycles = drive(spec, started, GOOD, 0, 900)
    promotions = [(t, moved) for t, before, moved in cycles if moved.rollout.promoted > before.promoted]
    assert [moved.rollout.promoted for _, moved in promotions] == [2, 3]
    assert [n.reason for _, moved in promotions for n in moved.notes] == [
        "RolloutPromoted",
        "RolloutSucceeded",
    ]
    for _, moved in promotions:
        assert moved.verdict is not None and moved.verdict.outcome == "pass"
        assert moved.rollout.canary == RequestCounts() and moved.rollout.control == RequestCounts()
    (second, _), (last, done) = promotions
    bake = 300
    assert second >= bake and last - second >= bake
    assert last <= 2 * bake + EVERY
    assert done.rollout.phase == "Complete" and set(serving(spec, done.rollout).values()) == {"1.1.0"}
    # Before each bake ended the verdict may pass already, and nothing moves.
    early = [moved for t, _, moved in cycles if t < bake]
    assert any(m.verdict is not None and m.verdict.outcome == "pass" for m in early)
    assert all(m.rollout.promoted == 1 for m in early)
    # Every cycle counted its ten seconds: in wave 2, dc-b (the wave alone, not dc-a that has
    # run it since wave 1) against dc-c (what has not taken it yet), 20 requests a second each.
    counted = next(moved.rollout for t, _, moved in cycles if t == second + 5 * EVERY)
    assert counted.wave == ["dc-b"] and counted.datacenters == ["dc-a", "dc-b"]
    assert counted.canary.requests == pytest.approx(20 * 50)
    assert counted.control.requests == pytest.approx(20 * 50)
    # Complete: nothing more to judge, nothing more moves.
    assert all(moved.rollout == done.rollout for t, _, moved in cycles if t > last)


def test_a_bad_revision_fails_at_its_first_look_and_step_does_not_abort_it() -> None:
    """30 % errors against 0.5 %: fail on the first cycle with enough requests. The abort is
    the engine's (a recorded, told rollback), not the step's."""
    spec = make_spec()
    started = step(spec, settled("1.0.0"), BAD, NOW).rollout
    moved = step(spec, started, BAD, at(EVERY))
    assert moved.verdict is not None and moved.verdict.outcome == "fail"
    assert moved.rollout.verdict.startswith("fail: ")
    assert (moved.rollout.phase, moved.rollout.promoted) == ("Progressing", 1)
    assert moved.rollout.rejected == [] and moved.notes == ()
    assert moved.rollout.canary.requests == pytest.approx(200)
    assert moved.rollout.canary.errors == pytest.approx(60)


def test_a_failed_wave_with_rollback_disabled_pauses_and_pages() -> None:
    """With the automatic rollback off, a failed wave is neither promoted nor left baking in
    silence: the rollout pauses and pages, for a person to abort (or promote) it."""
    body = {"version": "1.1.0", "datacenters": [{"name": n} for n in DCS]}
    spec = ImageServerSpec.model_validate({**body, "remediation": {"rollback": {"enabled": False}}})
    started = step(spec, settled("1.0.0"), BAD, NOW).rollout
    moved = step(spec, started, BAD, at(EVERY))
    assert moved.verdict is not None and moved.verdict.outcome == "fail"
    assert (moved.rollout.phase, moved.rollout.promoted) == ("Paused", 1)
    assert [n.page for n in moved.notes] == [True] and "rollback is disabled" in moved.notes[0].message
    later = step(spec, moved.rollout, BAD, at(EVERY * 40))
    assert (later.rollout.phase, later.rollout.promoted, later.notes) == ("Paused", 1, ())


def test_a_wave_without_enough_requests_pauses_and_pages_and_is_never_promoted() -> None:
    """Below minRequests the verdict stays inconclusive; past maxBake the rollout pauses and
    pages: nothing is promoted without evidence."""
    spec = make_spec()
    started = step(spec, settled("1.0.0"), QUIET, NOW).rollout
    cycles = drive(spec, started, QUIET, 0, 2400)
    before_max = [moved for t, _, moved in cycles if t < 1800]
    assert all(m.verdict is not None and m.verdict.outcome == "inconclusive" for m in before_max)
    assert all(m.verdict is not None and m.verdict.reason == "TooFewRequests" for m in before_max)
    assert all(m.rollout.phase == "Progressing" for m in before_max)
    paused = [(t, moved) for t, before, moved in cycles if moved.rollout.phase != before.phase]
    assert len(paused) == 1
    when, pausing = paused[0]
    assert when == 1800 and pausing.rollout.phase == "Paused"
    [note] = pausing.notes
    assert (note.reason, note.page, note.warning) == ("RolloutPaused", True, True)
    assert "promote or abort" in note.message.lower()
    assert all(moved.rollout.promoted == 1 for _, _, moved in cycles)
    assert serving(spec, cycles[-1][2].rollout) == {"dc-a": "1.1.0", "dc-b": "1.0.0", "dc-c": "1.0.0"}


def test_missing_data_never_promotes_nor_fails_and_counts_nothing() -> None:
    """Prometheus unreachable (rates None): no verdict is drawn from missing data."""
    spec = make_spec()
    started = step(spec, settled("1.0.0"), GOOD, NOW).rollout
    counted = drive(spec, started, GOOD, 0, 60)[-1][2].rollout
    cycles = drive(spec, counted, None, 60, 600)
    for _, _, moved in cycles:
        assert moved.verdict is not None and (moved.verdict.outcome, moved.verdict.reason) == (
            "inconclusive",
            "NoData",
        )
        assert (moved.rollout.phase, moved.rollout.promoted) == ("Progressing", 1)
        assert moved.rollout.canary == counted.canary and moved.rollout.control == counted.control
        assert moved.rollout.counted_at == counted.counted_at
        assert moved.notes == ()


def test_a_long_gap_counts_at_most_count_gap_seconds() -> None:
    """A new leader ten minutes later does not invent ten minutes of requests."""
    spec = make_spec()
    started = step(spec, settled("1.0.0"), GOOD, NOW).rollout
    late = step(spec, started, GOOD, at(600)).rollout
    assert late.canary.requests == pytest.approx(20 * COUNT_GAP)
    assert late.control.requests == pytest.approx(40 * COUNT_GAP)
    assert late.counted_at == stamp(at(600))
    # A clock that went back counts nothing.
    back = step(spec, late, GOOD, at(590)).rollout
    assert back.canary == late.canary


@pytest.mark.parametrize(
    "odd",
    [
        {"requests": math.nan, "errors": 0.1, "slow": 0.2},
        {"requests": 20.0, "errors": math.inf, "slow": 0.2},
        {"requests": -20.0, "errors": 0.1, "slow": 0.2},
        {"requests": 20.0, "errors": 0.1, "slow": -0.2},
    ],
    ids=["nan", "inf", "negative-requests", "negative-slow"],
)
def test_odd_rates_are_ignored(odd: dict[str, float]) -> None:
    spec = make_spec()
    started = step(spec, settled("1.0.0"), GOOD, NOW).rollout
    moved = step(spec, started, {"1.1.0": odd, "1.0.0": odd}, at(EVERY))
    assert moved.rollout.canary == RequestCounts() and moved.rollout.control == RequestCounts()
    assert moved.rollout.phase == "Progressing"


# -- what people command -----------------------------------------------------------------------


def test_promote_moves_one_wave_and_completes_on_the_last() -> None:
    spec = make_spec(wave_list=[["dc-a"], ["dc-b"], ["dc-c"]])
    counted = progressing(canary=RequestCounts(requests=10), control=RequestCounts(requests=20))
    second, note = command(spec, counted, "promote", at(30), "alice")
    assert (second.phase, second.promoted, note.reason) == ("Progressing", 2, "RolloutPromoted")
    assert "alice" in note.message and second.canary == RequestCounts()
    assert second.wave_since == stamp(at(30))
    last, note = command(spec, second, "promote", at(60), "alice")
    assert (last.phase, last.promoted, note.reason) == ("Complete", 3, "RolloutSucceeded")
    assert set(serving(spec, last).values()) == {"1.1.0"}


def test_promote_a_paused_rollout_moves_it_on() -> None:
    spec = make_spec()
    paused = progressing().model_copy(update={"phase": "Paused"})
    after, note = command(spec, paused, "promote", at(30), "alice")
    assert (after.phase, after.promoted, note.reason) == ("Complete", 2, "RolloutSucceeded")


def test_promote_an_aborted_rollout_starts_it_again_from_the_first_wave() -> None:
    spec = make_spec()
    rejected = aborted(progressing(rejected=["0.9.0"]), "canary failed")
    assert rejected.rejected == ["0.9.0", "1.1.0"]
    again, note = command(spec, rejected, "promote", at(30), "alice")
    assert (again.phase, again.promoted, again.target, again.stable) == ("Progressing", 1, "1.1.0", "1.0.0")
    assert again.rejected == ["0.9.0"]
    assert note.reason == "RolloutPromoted" and "alice" in note.message
    assert serving(spec, again) == {"dc-a": "1.1.0", "dc-b": "1.0.0", "dc-c": "1.0.0"}
    # ... and the loop goes on with it from there.
    assert step(spec, again, GOOD, at(40)).rollout.phase == "Progressing"


@pytest.mark.parametrize("verb", ["abort", "rollback"])
@pytest.mark.parametrize(
    "rollout",
    [progressing(), progressing().model_copy(update={"phase": "Paused"}), progressing(promoted=2)],
    ids=["progressing", "paused", "complete"],
)
def test_abort_and_rollback_return_everywhere_to_stable(verb: str, rollout: RolloutStatus) -> None:
    if rollout.promoted == 2:
        rollout = rollout.model_copy(update={"phase": "Complete"})
    spec = make_spec()
    after, note = command(spec, rollout, verb, at(30), "bob")
    assert (after.phase, after.promoted, after.rejected) == ("Aborted", 0, ["1.1.0"])
    assert set(serving(spec, after).values()) == {"1.0.0"}
    assert note.reason == "RolloutAborted" and note.warning and "bob" in note.message


def test_abort_acts_on_the_rollout_as_it_stands() -> None:
    """spec.version names a newer version not started yet (held by a freeze, say): an abort
    stops what runs, the 1.1.0 rollout, and rejects 1.1.0, not the version held."""
    after, _ = command(make_spec("1.2.0"), progressing(), "abort", at(30), "dave")
    assert (after.target, after.phase, after.rejected) == ("1.1.0", "Aborted", ["1.1.0"])
    assert set(serving(make_spec("1.2.0"), after).values()) == {"1.0.0"}


@pytest.mark.parametrize(
    ("version", "rollout", "verb", "says"),
    [
        ("1.1.0", progressing(), "restart", "unknown command 'restart'"),
        ("1.1.0", aborted(progressing(), "bad"), "abort", "already aborted: every datacenter runs 1.0.0"),
        ("1.1.0", aborted(progressing(), "bad"), "rollback", "already aborted"),
        (
            "1.1.0",
            RolloutStatus(target="1.1.0", stable="1.0.0", phase="Complete", promoted=2),
            "promote",
            "1.1.0 already runs in every datacenter",
        ),
        ("1.2.0", progressing(), "promote", "has not started rolling out 1.2.0 yet"),
        ("1.1.0", None, "abort", "has not started rolling out 1.1.0 yet"),
        ("1.1.0", settled("1.1.0"), "rollback", "no earlier version to return to than 1.1.0"),
    ],
    ids=[
        "unknown-verb",
        "abort-aborted",
        "rollback-aborted",
        "promote-complete",
        "promote-not-started",
        "no-rollout",
        "nothing-to-return-to",
    ],
)
def test_refusals_say_why(version: str, rollout: RolloutStatus | None, verb: str, says: str) -> None:
    with pytest.raises(Refused, match=says):
        command(make_spec(version), rollout, verb, at(30), "carol")


# -- the incident engine: a failing wave is rolled back once, as an incident ---------------------


class World:
    """One ImageServer as the API server holds it, changed only through the engine's effects
    (a smaller copy of test_incident_engine's)."""

    def __init__(self, *, mode: str = "auto", annotations: Mapping[str, str] | None = None) -> None:
        self.body: dict[str, Any] = {
            "metadata": {
                "name": "photos",
                "namespace": "prod",
                "generation": 2,
                "annotations": dict(annotations or {}),
            },
            "spec": {
                "version": "1.0.0",
                "datacenters": [{"name": n} for n in DCS],
                "remediation": {"mode": mode},
            },
            "status": {
                "revisions": {"current": "1.0.0", "previous": "", "since": ""},
                "rollout": settled("1.0.0").model_dump(by_alias=True, mode="json"),
            },
        }
        self.effects: list[engine.Effect] = []
        self.events: list[str] = []
        self.notices: list[IncidentMessage] = []
        self.postmortems: dict[str, dict[str, Any]] = {}

    def subject(self) -> Subject:
        return Subject.of(copy.deepcopy(self.body))

    def rollout(self) -> RolloutStatus | None:
        return self.subject().rollout

    def serving(self) -> dict[str, str]:
        subject = self.subject()
        return serving(subject.spec, subject.rollout)

    def cycle(self, observed: Observation, now: datetime.datetime) -> engine.Verdict:
        verdict = judge(self.subject(), observed, now, interval_seconds=EVERY)
        for effect in verdict.effects:
            self.effects.append(effect)
            match effect:
                case engine.WriteStatus(owned):
                    self._apply_status(owned)
                case engine.Annotate(annotations) | engine.Drain(_, _, annotations):
                    self._annotate(annotations)
                case engine.RollBack(_, owned, annotations):
                    self._apply_status(owned)
                    self._annotate(annotations)
                case engine.PostEvent(_, reason, _):
                    self.events.append(reason)
                case engine.Notify(message):
                    self.notices.append(message)
                case engine.OpenPostmortem(name, spec):
                    self.postmortems.setdefault(name, spec.model_dump(by_alias=True))
                case engine.AppendTimeline(incident, entry, _):
                    self.postmortems[incident]["timeline"].append(entry.model_dump())
                case engine.ResolvePostmortem(incident, _, _):
                    self.postmortems[incident]["state"] = "Resolved"
        return verdict

    def _apply_status(self, owned: Mapping[str, Any]) -> None:
        """Server-side apply of the SLO loop's fields."""
        others = {k: v for k, v in self.body["status"].items() if k not in engine.SLO_FIELDS}
        kept = [c for c in others.get("conditions", []) if c["type"] not in engine.SLO_CONDITIONS]
        applied = copy.deepcopy(dict(owned))
        self.body["status"] = {**others, **applied, "conditions": kept + applied.get("conditions", [])}

    def _annotate(self, annotations: Mapping[str, str | None]) -> None:
        mine = self.body["metadata"]["annotations"]
        for key, value in annotations.items():
            if value is None:
                mine.pop(key, None)
            else:
                mine[key] = value

    def rollbacks(self) -> list[engine.RollBack]:
        return [e for e in self.effects if isinstance(e, engine.RollBack)]


def observed(rates: Rates) -> Observation:
    """The SLO is calm everywhere (no budget-burn rollback would act): only the canary
    counts can tell the new version is bad."""
    revisions = ("1.0.0", "1.1.0")
    return Observation(
        True,
        60.0,
        CALM,
        {n: CALM for n in DCS},
        {r: CALM for r in revisions},
        errors_per_second=0.5,
        by_datacenter_revision={f"{n}/{r}": CALM for n in DCS for r in revisions},
        rates_by_datacenter_revision=rates,
    )


def test_the_engine_rolls_a_failing_wave_back_once_and_never_restarts_it() -> None:
    world = World()
    world.cycle(observed(GOOD), NOW)
    world.body["spec"]["version"] = "1.1.0"
    for cycle in range(1, 5):
        world.cycle(observed(BAD), at(cycle * EVERY))
    assert len(world.rollbacks()) == 1
    assert world.rollbacks()[0].version == "1.0.0"
    aborted_now = world.rollout()
    assert aborted_now is not None and aborted_now.phase == "Aborted"
    assert (aborted_now.target, aborted_now.stable, aborted_now.rejected) == ("1.1.0", "1.0.0", ["1.1.0"])
    assert set(world.serving().values()) == {"1.0.0"}
    assert world.body["spec"]["version"] == "1.1.0"  # the user's, never rewritten
    assert "canary verdict" in world.body["metadata"]["annotations"][engine.ROLLBACK_REASON_ANNOTATION]
    assert world.events.count("IncidentOpened") == 1 and len(world.postmortems) == 1
    assert world.events.count("RolledBack") == 1
    # One Slack thread: the rollout's start, then the incident its wave opened, in it.
    started, opened, *_ = world.notices
    assert started.incident == "photos-rollout-1.1.0" and started.rollout and not started.broadcast
    assert (opened.stage, opened.within, opened.broadcast) == ("opened", started.incident, True)
    rollout_condition = next(c for c in world.body["status"]["conditions"] if c["type"] == "Rollout")
    assert (rollout_condition["status"], rollout_condition["reason"]) == ("False", "Aborted")
    # The same spec, applied and judged again for a long time: the rollout never starts over.
    for cycle in range(5, 65):
        world.cycle(observed(BAD if cycle % 2 else GOOD), at(cycle * EVERY))
        assert set(world.serving().values()) == {"1.0.0"}
    assert len(world.rollbacks()) == 1 and world.events.count("IncidentOpened") == 1
    assert "RolloutStarted" not in world.events[world.events.index("RolledBack") :]


def test_the_engine_in_dry_run_rolls_out_everywhere_at_once_and_rolls_nothing_back() -> None:
    world = World(mode="dryRun")
    world.cycle(observed(GOOD), NOW)
    world.body["spec"]["version"] = "1.1.0"
    for cycle in range(1, 10):
        world.cycle(observed(BAD), at(cycle * EVERY))
        assert set(world.serving().values()) == {"1.1.0"}
    done = world.rollout()
    assert done is not None and done.phase == "Complete"
    assert world.rollbacks() == [] and "RolledBack" not in world.events
    assert world.events.count("RolloutSucceeded") == 1


def test_the_engine_paused_moves_nothing() -> None:
    world = World(annotations={PAUSED_ANNOTATION: "true"})
    world.cycle(observed(GOOD), NOW)
    before = world.rollout()
    world.body["spec"]["version"] = "1.1.0"
    for cycle in range(1, 10):
        world.cycle(observed(BAD), at(cycle * EVERY))
    assert world.rollout() == before
    assert set(world.serving().values()) == {"1.0.0"}
    assert world.rollbacks() == [] and not any(e.startswith("Rollout") for e in world.events)
    # The pause lifted, the new version starts with its first wave.
    del world.body["metadata"]["annotations"][PAUSED_ANNOTATION]
    world.cycle(observed(GOOD), at(100))
    assert world.serving() == {"dc-a": "1.1.0", "dc-b": "1.0.0", "dc-c": "1.0.0"}


# -- the promises, whatever happens --------------------------------------------------------------


@st.composite
def partitions(draw: st.DrawFn) -> tuple[list[str], list[list[str]]]:
    names = [f"dc-{i}" for i in range(draw(st.integers(2, 5)))]
    order = draw(st.permutations(names))
    cuts = sorted(draw(st.sets(st.integers(1, len(names) - 1))))
    bounds = [0, *cuts, len(names)]
    return names, [list(order[a:b]) for a, b in itertools.pairwise(bounds)]


ODD = st.sampled_from([0.0, 0.1, 1.0, 20.0, 50.0, -1.0, math.nan])
SIDE = st.fixed_dictionaries({"requests": ODD, "errors": ODD, "slow": ODD})
ANY_RATES = st.one_of(
    st.sampled_from([None, GOOD, BAD, QUIET]),
    st.fixed_dictionaries({"1.1.0": SIDE, "1.0.0": SIDE}),
)


@st.composite
def stories(draw: st.DrawFn) -> list[tuple[str, int, Rates | None]]:
    """Cycles, mostly at one traffic (so waves get promoted, or pause), now and then other
    rates, and now and then a person promoting or aborting (the rates then unused)."""
    usual = draw(st.sampled_from([GOOD, GOOD, QUIET, None]))
    rates = st.one_of(st.just(usual), st.just(usual), st.just(usual), ANY_RATES)
    moves = st.sampled_from(("cycle",) * 12 + ("promote", "abort"))
    return draw(st.lists(st.tuples(moves, st.integers(1, 120), rates), min_size=1, max_size=60))


@settings(max_examples=150, deadline=None)
@given(partitions(), stories())
def test_every_datacenter_runs_the_target_or_stable_and_only_an_abort_takes_one_back(
    plan: tuple[list[str], list[list[str]]], story: list[tuple[str, int, Rates | None]]
) -> None:
    """Every datacenter runs the target or the stable version; while a rollout goes on the
    datacenters on the target never become fewer except by an abort (then none is); a
    promotion by the loop needs a pass; an aborted target is rejected."""
    names, given_waves = plan
    spec = make_spec(dcs=names, wave_list=given_waves, bake="1m", maxBake="5m", minRequests=10)
    rollout = step(spec, RolloutStatus(target="1.0.0", stable="1.0.0", phase="Complete"), None, NOW).rollout
    now = NOW
    for move, gap, rates in story:
        before = rollout
        now += datetime.timedelta(seconds=gap)
        verdict = None
        if move == "cycle":
            moved = step(spec, rollout, rates, now)
            rollout, verdict = moved.rollout, moved.verdict
            if verdict is not None and verdict.outcome == "fail":
                rollout = aborted(rollout, verdict.message())  # what the engine's rollback does
            elif rollout.promoted > before.promoted:
                assert verdict is not None and verdict.outcome == "pass"
        else:
            with contextlib.suppress(Refused):
                rollout, _ = command(spec, rollout, move, now, "hypothesis")
        runs = serving(spec, rollout)
        assert set(runs) == set(names)
        assert set(runs.values()) <= {rollout.target, rollout.stable}
        if rollout.phase == "Aborted":
            assert rollout.target in rollout.rejected
            assert set(runs.values()) == {rollout.stable}
        elif before.phase in ("Progressing", "Paused"):
            assert on_target(spec, rollout) >= on_target(spec, before)


def spent(share: float | None) -> Observation:
    """Calm now, with `share` of the SLO window's error budget spent (None: not reported)."""
    return dataclasses.replace(observed(GOOD), budget_spent=share)


def frozen_condition(world: World) -> dict[str, Any]:
    return next(c for c in world.body["status"]["conditions"] if c["type"] == "ReleasesFrozen")


def test_a_spent_budget_freezes_releases_and_an_exception_is_recorded() -> None:
    """spec.budgetPolicy: with the budget spent a new version is not rolled out (told once);
    with the exception annotation it is, and the exception is told; the freeze lifts when the
    budget recovers. No data changes nothing."""
    world = World()
    world.body["spec"]["budgetPolicy"] = {"freeze": True, "freezeBelowPercent": 0}
    world.cycle(spent(1.2), NOW)
    condition = frozen_condition(world)
    assert (condition["status"], condition["reason"]) == ("True", "BudgetSpent")
    assert condition["message"].startswith("-20% of the 30d error budget left")
    assert world.events.count("ReleasesFrozen") == 1
    world.body["spec"]["version"] = "1.1.0"
    for cycle in range(1, 6):
        world.cycle(spent(1.2 if cycle % 2 else None), at(cycle * EVERY))
        assert set(world.serving().values()) == {"1.0.0"}
        assert frozen_condition(world)["status"] == "True"  # no data keeps the freeze
    assert world.events.count("RolloutFrozen") == 1 and "RolloutStarted" not in world.events
    world.body["metadata"]["annotations"]["imageserver.dev/release-exception"] = "P0: CVE fix"
    world.cycle(spent(1.2), at(6 * EVERY))
    assert world.serving()["dc-a"] == "1.1.0"
    assert world.events.count("ReleaseException") == 1
    assert any("P0: CVE fix" in m.headline for m in world.notices)
    world.cycle(spent(0.5), at(7 * EVERY))
    assert frozen_condition(world)["status"] == "False"
    assert world.events.count("ReleasesUnfrozen") == 1
    # The next incident's Postmortem records the exception, once.
    assert len(world.subject().memory.exceptions) == 1
    fire = {w: 50.0 for w in CALM}
    burning = Observation(
        True,
        60.0,
        fire,
        {n: fire for n in DCS},
        {"1.0.0": fire, "1.1.0": fire},
        errors_per_second=30.0,
        by_datacenter_revision={f"{n}/{r}": fire for n in DCS for r in ("1.0.0", "1.1.0")},
        budget_spent=0.6,
    )
    world.cycle(burning, at(8 * EVERY))
    (postmortem,) = world.postmortems.values()
    entries = [e for e in postmortem["timeline"] if e["event"].startswith("release exception: ")]
    assert len(entries) == 1 and "P0: CVE fix" in entries[0]["event"] and entries[0]["actor"] == "human"
    assert world.subject().memory.exceptions == []


def test_without_a_budget_policy_nothing_is_frozen() -> None:
    world = World()
    world.cycle(spent(3.0), NOW)
    world.body["spec"]["version"] = "1.1.0"
    world.cycle(spent(3.0), at(EVERY))
    assert world.serving()["dc-a"] == "1.1.0"
    assert not any(c["type"] == "ReleasesFrozen" for c in world.body["status"]["conditions"])


# -- found in review: what happens when people change things mid-rollout ----------------------


def test_remediation_switched_off_mid_rollout_holds_the_waves_where_they_are() -> None:
    spec = make_spec(wave_list=[["dc-a"], ["dc-b"], ["dc-c"]])
    moved = step(spec, progressing(), GOOD, at(3600), gated=False)
    assert (moved.rollout.phase, moved.rollout.promoted, moved.notes) == ("Progressing", 1, ())
    assert serving(spec, moved.rollout) == {"dc-a": "1.1.0", "dc-b": "1.0.0", "dc-c": "1.0.0"}


def test_waves_edited_mid_rollout_move_no_datacenter() -> None:
    """The datacenters on the target are kept by name: reordering the waves, or adding a
    datacenter in front, neither moves the canary nor promotes on the old wave's evidence."""
    before = step(make_spec(wave_list=[["dc-a"], ["dc-b"], ["dc-c"]]), settled("1.0.0"), GOOD, NOW).rollout
    reordered = make_spec(wave_list=[["dc-c"], ["dc-b"], ["dc-a"]])
    assert serving(reordered, before) == {"dc-a": "1.1.0", "dc-b": "1.0.0", "dc-c": "1.0.0"}
    grown = make_spec(dcs=("dc-z", *DCS))
    assert serving(grown, before)["dc-z"] == "1.0.0"
    cycles = drive(reordered, before, GOOD, EVERY, 320)
    promoted = next(moved.rollout for _, old, moved in cycles if moved.rollout.promoted > old.promoted)
    assert promoted.wave == ["dc-c"] and promoted.datacenters == ["dc-a", "dc-c"]


def test_back_to_the_stable_version_goes_everywhere_at_once_and_is_no_exception() -> None:
    done = RolloutStatus(target="1.1.0", stable="1.0.0", phase="Complete", promoted=2)
    moved = step(make_spec("1.0.0"), done, GOOD, NOW, frozen="budget spent")
    assert moved.rollout.phase == "Complete" and set(serving(make_spec("1.0.0"), moved.rollout).values()) == {
        "1.0.0"
    }
    assert [n.reason for n in moved.notes] == ["RolloutSucceeded"]


def test_a_rollback_while_a_newer_version_is_held_rejects_the_one_that_runs() -> None:
    done = RolloutStatus(target="1.1.0", stable="1.0.0", phase="Complete", promoted=2, rejected=["0.9.0"])
    after = rolled_back(done, make_spec("1.2.0"), "1.0.0", "1.1.0 burns")
    assert (after.target, after.phase, after.rejected) == ("1.1.0", "Aborted", ["0.9.0", "1.1.0"])


def test_a_failed_wave_is_rolled_back_even_when_the_service_is_too_quiet_to_judge() -> None:
    world = World()
    world.cycle(observed(GOOD), NOW)
    world.body["spec"]["version"] = "1.1.0"
    quiet = dataclasses.replace(observed(BAD), requests_per_second=0.01)
    for cycle in range(1, 5):
        world.cycle(quiet, at(cycle * EVERY))
    assert len(world.rollbacks()) == 1 and set(world.serving().values()) == {"1.0.0"}


def test_a_burning_wave_is_never_drained() -> None:
    """Mid-rollout, burn concentrated where the new version runs looks like a sick datacenter;
    it is the version: never drained (its rollback comes from the revision's burn or the
    verdict, even when the datacenter's series are the first to show it)."""
    world = World()
    world.cycle(observed(GOOD), NOW)
    world.body["spec"]["version"] = "1.1.0"
    world.cycle(observed(QUIET), at(EVERY))  # wave 1 takes it, too little traffic for a verdict
    fire = {w: 80.0 for w in CALM}
    burning = Observation(
        True,
        60.0,
        {w: 30.0 for w in CALM},
        {"dc-a": fire, "dc-b": CALM, "dc-c": CALM},
        {"1.1.0": CALM, "1.0.0": CALM},  # the revision's own series not burning yet
        errors_per_second=6.0,
        by_datacenter_revision={"dc-a/1.1.0": fire, "dc-b/1.0.0": CALM, "dc-c/1.0.0": CALM},
        rates_by_datacenter_revision=QUIET,
    )
    world.cycle(burning, at(2 * EVERY))
    assert not any(isinstance(e, engine.Drain) for e in world.effects)
    # A burn of a handful of failures is not acted on; an evident one is.
    few = dataclasses.replace(burning, by_revision={"1.1.0": fire, "1.0.0": CALM})
    world.cycle(few, at(3 * EVERY))
    assert not world.rollbacks()
    world.cycle(dataclasses.replace(few, rates_by_datacenter_revision=SMOLDERING), at(4 * EVERY))
    assert len(world.rollbacks()) == 1 and set(world.serving().values()) == {"1.0.0"}
    # Aborted by the wave's verdict, which the revision's page-level burn fails at once.
    reason = world.body["metadata"]["annotations"][engine.ROLLBACK_REASON_ANNOTATION]
    assert "canary verdict" in reason and "page level (80.0x over 5m" in reason, reason


def test_a_wave_whose_revision_burns_at_page_level_fails_at_once() -> None:
    """The SLO's page rule on the revision (every request it served) fails the wave before its
    counts, which add up a short-window rate, have caught up; another revision's burn, or a
    burn without canary data, does not."""
    spec = make_spec()
    started = step(spec, settled("1.0.0"), QUIET, NOW).rollout
    burning = {"1.1.0": "80.0x over 5m, 20.0x over 1h"}
    moved = step(spec, started, QUIET, at(EVERY), burning=burning)
    assert moved.verdict is not None and (moved.verdict.outcome, moved.verdict.reason) == (
        "fail",
        "PageLevelBurn",
    )
    assert moved.rollout.verdict.startswith(
        "fail: canary burns the error budget at page level (80.0x over 5m"
    )
    for other in (
        step(spec, started, QUIET, at(EVERY), burning={"1.0.0": "80.0x over 5m"}),
        step(spec, started, None, at(EVERY), burning=burning),
    ):
        assert other.verdict is not None and other.verdict.outcome == "inconclusive"


def test_a_page_level_burn_is_no_verdict_on_a_handful_of_failures_or_when_the_service_is_quiet() -> None:
    """One failure in a new revision's first five requests burns 20 % on every window, far past
    the page factor: it takes MIN_PAGE_ERRORS failures in the short window to count."""
    fire = {w: 80.0 for w in CALM}
    loud = dataclasses.replace(observed(SMOLDERING), by_revision={"1.1.0": fire, "1.0.0": CALM})
    assert burning_revisions(loud, 300) == {"1.1.0": "80.0x over 5m, 80.0x over 1h, 80.0x over 6h"}
    assert burning_revisions(loud, 30) == {}  # 1.5 failures in a 30 s window
    assert burning_revisions(dataclasses.replace(loud, rates_by_datacenter_revision=QUIET), 300) == {}
    assert burning_revisions(dataclasses.replace(loud, requests_per_second=0.01), 300) == {}
    assert burning_revisions(dataclasses.replace(loud, reachable=False), 300) == {}


def test_a_good_rollout_is_told_step_by_step_in_one_conversation_with_its_numbers() -> None:
    world = World()
    world.cycle(observed(GOOD), NOW)
    world.body["spec"]["version"] = "1.1.0"
    for cycle in range(1, 80):
        world.cycle(observed(GOOD), at(cycle * EVERY))
    assert set(world.serving().values()) == {"1.1.0"}
    told = [(m.incident, m.stage, m.broadcast) for m in world.notices]
    assert told == [("photos-rollout-1.1.0", "rollout", False)] * 2  # waves [dc-a], [dc-b, dc-c]
    started, succeeded = (m.headline for m in world.notices)
    assert started.startswith("rolling out 1.1.0: wave 1")
    assert "runs in every datacenter" in succeeded and "pass: canary" in succeeded and "interval" in succeeded


def test_a_version_that_goes_everywhere_at_once_is_not_told_in_slack() -> None:
    world = World(mode="dryRun")
    world.cycle(observed(GOOD), NOW)
    world.body["spec"]["version"] = "1.1.0"
    world.cycle(observed(GOOD), at(EVERY))
    assert "RolloutSucceeded" in world.events and world.notices == []
