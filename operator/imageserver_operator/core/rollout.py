"""Progressive delivery: where a new version runs, and when it goes further. Pure.

A new `spec.version` is taken by the waves of `spec.rollout` one after another. The first
wave runs it while the datacenters after it keep the stable version: that is the live
control it is judged against (`canary.judge`), over the same interval, cycle after cycle.
A wave that passes and has baked is followed by the next; one that fails is aborted (every
datacenter back to stable, through the incident engine's rollback, so it is recorded, told
and written into a Postmortem like any action); one still inconclusive past `maxBake` pauses
the rollout and pages: nothing is promoted without evidence. The last wave completes the
rollout (no control is left); from there the budget-burn rollback guards the version.

The state lives in `status.rollout` (`RolloutStatus`), never in the spec: a GitOps tool that
owns the spec sees it unchanged, and an aborted version stays named there, running nowhere,
until a person changes it. The reconcile loop renders each datacenter at `serving(...)`.

Counts are the SLO loop's rates by revision, added cycle by cycle (rate x seconds since the
last count, capped): a new leader goes on from the counts in status.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from imageserver_operator.api import durations
from imageserver_operator.api.durations import parse_time, stamp
from imageserver_operator.api.models import (
    RELEASE_EXCEPTION_ANNOTATION,
    ImageServerSpec,
    RequestCounts,
    RolloutStatus,
)
from imageserver_operator.core import canary, slo

MAX_REJECTED = 16
COUNT_GAP = 60.0  # at most this many seconds of rate are counted at once (a long pause is not known)
PAGE_FACTOR = 14.4  # the page-level burn: what fails a canary whatever the control does
Rates = Mapping[str, Mapping[str, float]]  # "datacenter/revision" → requests/errors/slow per second


@dataclass(frozen=True)
class Note:
    """Something to tell people: an Event reason, its type, and the text."""

    reason: str
    message: str
    warning: bool = False
    page: bool = False  # on-call must look (a paused rollout)


@dataclass(frozen=True)
class Step:
    rollout: RolloutStatus
    verdict: canary.Verdict | None = None  # this cycle's, while a wave is judged
    notes: tuple[Note, ...] = ()


def waves(spec: ImageServerSpec) -> list[list[str]]:
    """The waves in order. Default: the first datacenter alone, then the rest. A datacenter no
    wave names (an object stored before the schema said so) joins the last wave."""
    names = [dc.name for dc in spec.datacenters]
    given = [[n for n in wave if n in names] for wave in spec.rollout.waves]
    given = [wave for wave in given if wave]
    if not given:
        given = [names[:1], names[1:]] if len(names) > 1 else [names]
    named = {n for wave in given for n in wave}
    rest = [n for n in names if n not in named]
    if rest:
        given[-1] = given[-1] + rest
    return given


def of(raw: object) -> RolloutStatus | None:
    """The rollout in a status, None when absent or unreadable (a hand-edited status must not
    stop the automation: it starts over from the spec)."""
    if not isinstance(raw, Mapping) or not raw:
        return None
    try:
        return RolloutStatus.model_validate(raw)
    except ValueError:
        return None


def serving(spec: ImageServerSpec, rollout: RolloutStatus | None) -> dict[str, str]:
    """The revision each datacenter runs. A version the SLO loop has not taken up yet runs
    nowhere: the last rollout's state holds until it starts the new one."""
    names = [dc.name for dc in spec.datacenters]
    if rollout is None:
        return dict.fromkeys(names, spec.version)
    if rollout.phase == "Complete":
        return dict.fromkeys(names, rollout.target)
    if rollout.phase == "Aborted":
        return dict.fromkeys(names, rollout.stable)
    promoted = set(rollout.datacenters) or {n for wave in waves(spec)[: rollout.promoted] for n in wave}
    return {n: rollout.target if n in promoted else rollout.stable for n in names}


def _next_wave(spec: ImageServerSpec, running: Sequence[str]) -> list[str]:
    """The first wave (as the spec says now) with a datacenter not yet on the target."""
    return next(
        ([n for n in wave if n not in running] for wave in waves(spec) if set(wave) - set(running)), []
    )


def analysis(spec: ImageServerSpec) -> canary.Analysis:
    budget = slo.budget(spec.slo.availability.objective)
    return canary.Analysis(
        min_requests=spec.rollout.min_requests,
        error_margin=spec.rollout.error_margin_percent / 100,
        slow_margin=spec.rollout.slow_margin_percent / 100,
        page_error_ratio=min(PAGE_FACTOR * budget, 1.0),
    )


def _counts(counts: RequestCounts) -> canary.Counts:
    return canary.Counts(counts.requests, counts.errors, counts.slow)


def _summed(rates: Rates, datacenters: Sequence[str], revision: str) -> dict[str, float] | None:
    """One side's rates: `revision` in `datacenters` (None when none of them reports it)."""
    parts = [rates[f"{dc}/{revision}"] for dc in datacenters if f"{dc}/{revision}" in rates]
    if not parts:
        return None
    return {k: sum(p.get(k, 0.0) for p in parts) for k in ("requests", "errors", "slow")}


def _added(counts: RequestCounts, rates: Mapping[str, float] | None, seconds: float) -> RequestCounts:
    if not rates:
        return counts
    more = {k: rates.get(k, 0.0) * seconds for k in ("requests", "errors", "slow")}
    if not all(math.isfinite(v) and v >= 0 for v in more.values()):
        return counts
    return RequestCounts(
        requests=counts.requests + more["requests"],
        errors=counts.errors + more["errors"],
        slow=counts.slow + more["slow"],
    )


def _started(previous: RolloutStatus | None, spec: ImageServerSpec, now: datetime.datetime) -> RolloutStatus:
    """A rollout of spec.version from what runs everywhere now."""
    if previous is None:
        stable = spec.version
    else:
        stable = previous.target if previous.phase == "Complete" else previous.stable
    rejected = list(previous.rejected) if previous is not None else []
    at = stamp(now)
    # Nothing new; back to the version that ran before (known good: no waves for a retreat);
    # or nothing to compare a single wave with: every datacenter at once.
    back = previous is not None and spec.version == previous.stable
    if stable == spec.version or back or len(waves(spec)) == 1:
        # Nothing new, or nothing to compare a single wave with: every datacenter at once.
        return RolloutStatus(
            target=spec.version,
            stable=stable,
            phase="Complete",
            promoted=len(waves(spec)),
            started_at=at,
            wave_since=at,
            rejected=rejected,
        )
    first = waves(spec)[0]
    return RolloutStatus(
        target=spec.version,
        stable=stable,
        phase="Progressing",
        promoted=1,
        datacenters=first,
        wave=first,
        started_at=at,
        wave_since=at,
        counted_at=at,
        rejected=rejected,
    )


def seeded(spec: ImageServerSpec, revisions: Mapping[str, object], now: datetime.datetime) -> RolloutStatus:
    """The rollout of an ImageServer whose status has none yet (it ran before rollouts were
    kept): complete, with its previous revision as the one to return to."""
    current, previous = str(revisions.get("current") or ""), str(revisions.get("previous") or "")
    if current == spec.version and previous and previous != current:
        since = str(revisions.get("since") or "") or stamp(now)
        return RolloutStatus(
            target=current,
            stable=previous,
            phase="Complete",
            promoted=len(waves(spec)),
            started_at=since,
            wave_since=since,
        )
    return _started(None, spec, now)


def step(
    spec: ImageServerSpec,
    rollout: RolloutStatus | None,
    rates: Rates | None,
    now: datetime.datetime,
    *,
    gated: bool = True,
    hold: bool = False,
    revisions: Mapping[str, object] | None = None,
    frozen: str = "",
    exception: str = "",
    burning: Mapping[str, str] | None = None,
) -> Step:
    """The rollout after one cycle. `rates` None: Prometheus said nothing (no verdict is
    drawn from missing data). `gated` False (remediation not auto): a new version goes
    everywhere at once, as the spec asks, unjudged. `hold` (automation paused): nothing
    moves. `revisions` (status.revisions) seeds the first rollout of an ImageServer that ran
    before rollouts were kept: its previous revision stays the one a rollback returns to.
    `frozen` (why releases are frozen, empty when not) stops a new version from starting
    unless `exception` gives the reason for one (a P0 or security fix). `burning`: the
    revisions the SLO loop sees burning the budget at page level, with their burn rates; a
    wave whose revision is one fails at once."""
    if rollout is None:
        return Step(seeded(spec, revisions or {}, now))
    if hold:
        return Step(rollout)
    if spec.version != rollout.target:
        if spec.version in rollout.rejected:
            # What runs everywhere now stays (a later version may have completed since).
            stable = rollout.target if rollout.phase == "Complete" else rollout.stable
            held = rollout.model_copy(
                update={
                    "target": spec.version,
                    "stable": stable,
                    "phase": "Aborted",
                    "promoted": 0,
                    "verdict": f"{spec.version} was aborted before; promote it to roll it out again",
                }
            )
            return Step(held)
        if frozen and not exception and spec.version != rollout.stable:
            text = (
                f"{spec.version} not rolled out: releases are frozen ({frozen}); for a P0 or security fix, "
                f"annotate the ImageServer {RELEASE_EXCEPTION_ANNOTATION}=<reason>"
            )
            if rollout.verdict == text:
                return Step(rollout)
            return Step(
                rollout.model_copy(update={"verdict": text}),
                notes=(Note("RolloutFrozen", text, warning=True),),
            )
        excepted: tuple[Note, ...] = ()
        if frozen and exception and spec.version != rollout.stable:
            text = f"{spec.version} rolled out while releases are frozen ({frozen}), as an exception: "
            excepted = (Note("ReleaseException", (text + exception)[:1000], warning=True, page=True),)
        started = _started(rollout, spec, now)
        if not gated and started.phase == "Progressing":
            started = started.model_copy(update={"phase": "Complete", "promoted": len(waves(spec))})
        if started.phase == "Complete":
            text = f"{spec.version} runs in every datacenter"
            return Step(started, notes=(*excepted, Note("RolloutSucceeded", text)))
        first = ", ".join(waves(spec)[0])
        text = f"rolling out {spec.version}: wave 1 ({first}) takes it, judged against {started.stable}"
        return Step(started, notes=(*excepted, Note("RolloutStarted", text)))
    if rollout.phase != "Progressing":
        return Step(rollout)
    burn = (burning or {}).get(rollout.target, "") if rates is not None else ""
    return _judged(spec, rollout, rates, now, gated=gated, burn=burn)


def _judged(
    spec: ImageServerSpec,
    rollout: RolloutStatus,
    rates: Rates | None,
    now: datetime.datetime,
    *,
    gated: bool,
    burn: str = "",
) -> Step:
    all_waves = waves(spec)
    since = parse_time(rollout.counted_at) or now
    seconds = min(max((now - since).total_seconds(), 0.0), COUNT_GAP)
    counted = rollout
    if rates is not None:
        running = set(serving(spec, rollout).items())
        wave = rollout.wave or [dc for dc, revision in running if revision == rollout.target]
        control = [dc for dc, revision in running if revision == rollout.stable]
        counted = rollout.model_copy(
            update={
                # The wave being judged against what has not taken the target yet: earlier
                # waves' traffic says nothing new about this one.
                "canary": _added(rollout.canary, _summed(rates, wave, rollout.target), seconds),
                "control": _added(rollout.control, _summed(rates, control, rollout.stable), seconds),
                "counted_at": stamp(now),
            }
        )
    verdict = canary.burned(
        canary.judge(
            _counts(counted.canary) if rates is not None else None, _counts(counted.control), analysis(spec)
        ),
        burn,
    )
    counted = counted.model_copy(update={"verdict": verdict.message()})
    if verdict.outcome == "fail":
        if spec.remediation.rollback.enabled:
            return Step(counted, verdict)  # aborted by the engine's rollback, recorded and told
        # Never promoted, and someone must decide: the automatic rollback is switched off.
        paused = counted.model_copy(update={"phase": "Paused"})
        text = (
            f"{rollout.target} failed its verdict in wave {rollout.promoted} ({verdict.message()}); "
            "automatic rollback is disabled: abort or promote it: imageserver-operator abort|promote NAME"
        )
        return Step(paused, verdict, (Note("RolloutPaused", text, warning=True, page=True),))
    baked = now - (parse_time(rollout.wave_since) or now)
    if not gated:
        return Step(counted, verdict)  # remediation switched off mid-rollout: it holds where it is
    if verdict.outcome == "pass" and baked >= durations.parse(spec.rollout.bake):
        return Step(*_promoted(spec, counted, all_waves, verdict, now))
    if baked >= max(durations.parse(spec.rollout.max_bake), durations.parse(spec.rollout.bake)):
        minutes = int(baked.total_seconds() // 60)
        paused = counted.model_copy(update={"phase": "Paused"})
        text = (
            f"{rollout.target} paused in wave {rollout.promoted} after {minutes} min without a verdict: "
            f"{verdict.message()}. Promote or abort it: imageserver-operator promote|abort NAME"
        )
        return Step(paused, verdict, (Note("RolloutPaused", text, warning=True, page=True),))
    return Step(counted, verdict)


def _promoted(
    spec: ImageServerSpec,
    rollout: RolloutStatus,
    all_waves: Sequence[Sequence[str]],
    verdict: canary.Verdict | None,
    now: datetime.datetime,
    *,
    by: str = "",
) -> tuple[RolloutStatus, canary.Verdict | None, tuple[Note, ...]]:
    already = [dc for dc, revision in serving(spec, rollout).items() if revision == rollout.target]
    wave = _next_wave(spec, already)
    datacenters = [*already, *wave]
    complete = not _next_wave(spec, datacenters)
    promoted = min(rollout.promoted + 1, len(all_waves))
    after = rollout.model_copy(
        update={
            "promoted": len(all_waves) if complete else promoted,
            "datacenters": datacenters,
            "wave": wave,
            "phase": "Complete" if complete else "Progressing",
            "wave_since": stamp(now),
            "canary": RequestCounts(),
            "control": RequestCounts(),
            "counted_at": stamp(now),
        }
    )
    why = by or (verdict.message() if verdict is not None else "not judged (remediation is not auto)")
    named = ", ".join(wave)
    if complete:
        text = f"{rollout.target} runs in every datacenter (wave {promoted}: {named}); {why}"
        return after, verdict, (Note("RolloutSucceeded", text),)
    text = f"{rollout.target} promoted to wave {promoted} ({named}); {why}"
    return after, verdict, (Note("RolloutPromoted", text),)


def aborted(rollout: RolloutStatus, why: str) -> RolloutStatus:
    """Every datacenter back to the stable version; the target is remembered as rejected, so
    the same spec applied again does not start it again."""
    rejected = [r for r in rollout.rejected if r != rollout.target] + [rollout.target]
    return rollout.model_copy(
        update={
            "phase": "Aborted",
            "promoted": 0,
            "verdict": why[:2000],
            "rejected": rejected[-MAX_REJECTED:],
        }
    )


def rolled_back(rollout: RolloutStatus | None, spec: ImageServerSpec, target: str, why: str) -> RolloutStatus:
    """The rollback the incident engine decided: to `target` (the stable version), of the
    rollout as it stands (a newer spec.version held by a freeze is not what burns)."""
    if rollout is None:
        rollout = RolloutStatus(target=spec.version, stable=target, phase="Complete")
    if rollout.stable != target:
        rollout = rollout.model_copy(update={"stable": target})
    return aborted(rollout, why)


# -- what people ask for (the CLI), on the same path -------------------------------------------


class Refused(Exception):
    """A command that does not apply to the rollout as it stands; the message says why."""


def command(
    spec: ImageServerSpec, rollout: RolloutStatus | None, verb: str, now: datetime.datetime, who: str
) -> tuple[RolloutStatus, Note]:
    """promote: the next wave now (an aborted or rejected version: roll it out again);
    abort / rollback: every datacenter back to the stable version."""
    if rollout is None or (verb == "promote" and rollout.target != spec.version):
        raise Refused(f"the operator has not started rolling out {spec.version} yet: try again in a moment")
    if verb == "promote":
        if rollout.phase == "Complete":
            raise Refused(f"{rollout.target} already runs in every datacenter")
        if rollout.phase == "Aborted":
            retry = rollout.model_copy(
                update={"rejected": [r for r in rollout.rejected if r != rollout.target]}
            )
            started = _started(
                retry.model_copy(update={"target": retry.stable, "phase": "Complete"}), spec, now
            )
            text = f"{rollout.target} rolled out again by {who}"
            return started, Note("RolloutPromoted", text)
        after, _, notes = _promoted(spec, rollout, waves(spec), None, now, by=f"promoted by {who}")
        return after, notes[0]
    if verb in ("abort", "rollback"):
        if rollout.phase == "Aborted":
            raise Refused(f"{rollout.target} is already aborted: every datacenter runs {rollout.stable}")
        if rollout.stable == rollout.target:
            raise Refused(f"there is no earlier version to return to than {rollout.target}")
        why = f"{verb} by {who}: every datacenter back to {rollout.stable}"
        return aborted(rollout, why), Note("RolloutAborted", f"{rollout.target} aborted; {why}", warning=True)
    raise Refused(f"unknown command {verb!r}: promote, abort or rollback")
