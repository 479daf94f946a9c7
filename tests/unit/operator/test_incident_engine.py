"""The incident engine: every safety promise of the SLO loop, on the pure function, with a
small in-memory API that applies its effects the way the executor and the API server do."""

from __future__ import annotations

import copy
import datetime
import itertools
import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imageserver_operator.core import engine, rollout
from imageserver_operator.core.engine import Subject, judge
from imageserver_operator.core.incidents import INCIDENT_ANNOTATION, LAST_ACTION_ANNOTATION, Recorded
from imageserver_operator.core.messages import IncidentMessage
from imageserver_operator.core.policy import Observation

NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)
CALM = {"5m": 0.2, "30m": 0.2, "1h": 0.2, "2h": 0.2, "6h": 0.2, "1d": 0.2, "3d": 0.2}
FIRE = {"5m": 50.0, "30m": 40.0, "1h": 20.0, "2h": 10.0, "6h": 4.0, "1d": 1.0, "3d": 0.5}
DCS = ("dc-a", "dc-b", "dc-c")


def seen(
    service: dict[str, float] = CALM,
    *,
    dc: dict[str, dict[str, float]] | None = None,
    rev: dict[str, dict[str, float]] | None = None,
    serving: str = "1.1.0",
    errors: float = 0.0,
) -> Observation:
    datacenters = dc if dc is not None else {name: CALM for name in DCS}
    return Observation(
        True,
        50.0,
        service,
        datacenters,
        rev if rev is not None else {serving: CALM},
        errors_per_second=errors,
        by_datacenter_revision={f"{name}/{serving}": burn for name, burn in datacenters.items()},
    )


BAD_ROLLOUT = seen(FIRE, dc={n: FIRE for n in DCS}, rev={"1.1.0": FIRE, "1.0.0": CALM}, errors=25.0)
SICK_B = seen(FIRE, dc={"dc-a": CALM, "dc-b": FIRE, "dc-c": CALM}, errors=10.0)


class World:
    """One ImageServer as the API server holds it, changed only through the engine's effects
    (and, for a rollback, the reconcile loop's revision bookkeeping)."""

    def __init__(
        self,
        *,
        mode: str = "auto",
        annotations: dict[str, str] | None = None,
        status: dict[str, Any] | None = None,
        version: str = "1.1.0",
        remediation: dict[str, Any] | None = None,
    ) -> None:
        since = (NOW - datetime.timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.body: dict[str, Any] = {
            "metadata": {
                "name": "photos",
                "namespace": "prod",
                "generation": 2,
                "resourceVersion": "1",
                "annotations": dict(annotations or {}),
            },
            "spec": {
                "version": version,
                "datacenters": [{"name": n} for n in DCS],
                "remediation": {"mode": mode, **(remediation or {})},
            },
            "status": status
            if status is not None
            else {"revisions": {"current": "1.1.0", "previous": "1.0.0", "since": since}},
        }
        self.events: list[str] = []
        self.notices: list[IncidentMessage] = []
        self.postmortems: dict[str, dict[str, Any]] = {}
        self.writes = 0

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.body["metadata"]["annotations"])

    def serving(self) -> set[str]:
        """The revisions the datacenters run, as the reconcile loop renders them."""
        subject = self.subject()
        return set(rollout.serving(subject.spec, subject.rollout).values())

    def subject(self) -> Subject:
        return Subject.of(copy.deepcopy(self.body))

    def cycle(self, observed: Observation, now: datetime.datetime) -> engine.Verdict:
        verdict = judge(self.subject(), observed, now)
        self.apply(verdict.effects, now)
        return verdict

    def apply(self, effects: Sequence[engine.Effect], now: datetime.datetime) -> None:
        meta = self.body["metadata"]
        for effect in effects:
            if isinstance(effect, engine.WRITES_WITH_PRECONDITION):
                self.writes += 1
                meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
            match effect:
                case engine.WriteStatus(owned):
                    self._apply_status(owned)
                case engine.Annotate(annotations) | engine.Drain(_, _, annotations):
                    self._annotate(annotations)
                case engine.RollBack(_, owned, annotations):  # the status, then the record
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
                case engine.ResolvePostmortem(incident, _, impact):
                    self.postmortems[incident]["state"] = "Resolved"
                    self.postmortems[incident]["impact"] = impact.model_dump(by_alias=True)

    def _apply_status(self, owned: Any) -> None:
        """Server-side apply of the SLO loop's fields."""
        others = {k: v for k, v in self.body["status"].items() if k not in engine.SLO_FIELDS}
        kept = [c for c in others.get("conditions", []) if c["type"] not in engine.SLO_CONDITIONS]
        applied = copy.deepcopy(dict(owned))
        self.body["status"] = {**others, **applied, "conditions": kept + applied["conditions"]}

    def _annotate(self, annotations: Any) -> None:
        mine = self.body["metadata"]["annotations"]
        for key, value in annotations.items():
            if value is None:
                mine.pop(key, None)
            else:
                mine[key] = value


def minutes(n: float) -> datetime.datetime:
    return NOW + datetime.timedelta(minutes=n)


def test_a_bad_rollout_is_rolled_back_once_and_its_incident_goes_on_whoever_leads() -> None:
    """Every cycle may be judged by another replica: all it knows is the ImageServer."""
    world = World()
    for step in range(6):
        world.cycle(BAD_ROLLOUT, minutes(step * 0.25))
    assert world.events.count("RolledBack") == 1
    assert world.events.count("IncidentOpened") == 1
    assert world.serving() == {"1.0.0"}
    assert world.body["spec"]["version"] == "1.1.0"  # the user's, never rewritten
    aborted = world.subject().rollout
    assert aborted is not None and aborted.phase == "Aborted" and aborted.rejected == ["1.1.0"]
    incident = world.annotations[INCIDENT_ANNOTATION]
    memory = world.subject().memory
    assert memory.tally is not None and memory.tally.failed == pytest.approx(25 * 15 * 6)
    # Users fine again: resolved once, with the cost counted across every cycle.
    calm = seen(dc={n: CALM for n in DCS}, serving="1.0.0")
    for step in range(6, 12):
        world.cycle(calm, minutes(step * 0.25))
    assert INCIDENT_ANNOTATION not in world.annotations
    assert world.postmortems[incident]["state"] == "Resolved"
    # 2,250 counted, but a 5m rate spreads a burst: the worst five minutes (25/s x 300 s) holds more.
    assert world.postmortems[incident]["impact"]["failedRequestsEstimate"] == 25 * 300
    stages = [m.stage for m in world.notices]
    assert stages == ["opened", "action", "resolved"]
    assert world.subject().memory.tally is None


def test_a_page_and_a_dry_run_notice_are_sent_once_per_incident_across_leaders() -> None:
    world = World(mode="dryRun")
    for step in range(8):
        world.cycle(BAD_ROLLOUT, minutes(step * 0.25))
    assert [m.stage for m in world.notices] == ["opened", "action"]
    assert world.notices[1].dry_run
    assert world.events.count("WouldRollback") == 1
    assert world.serving() == {"1.1.0"}


def test_a_calm_service_writes_nothing_once_its_state_is_written() -> None:
    world = World()
    world.cycle(seen(), NOW)
    before = world.writes
    for step in range(1, 20):
        world.cycle(seen(), minutes(step * 0.25))
    assert world.writes == before


def test_the_tally_counts_the_time_leadership_took_to_move() -> None:
    world = World()
    world.cycle(BAD_ROLLOUT, NOW)
    first = world.subject().memory.tally
    assert first is not None and first.seconds == 15
    # The next leader judges 40 s later: the 40 s are counted, a long absence only in part.
    world.cycle(BAD_ROLLOUT, NOW + datetime.timedelta(seconds=40))
    second = world.subject().memory.tally
    assert second is not None and second.seconds == 55
    world.cycle(BAD_ROLLOUT, NOW + datetime.timedelta(minutes=30))
    third = world.subject().memory.tally
    assert third is not None and third.seconds == 55 + 4 * 15


def test_the_previous_revisions_baseline_survives_a_new_leader() -> None:
    """Mid-rollout the old revision's pods fail through the new ones: what it did while it
    was current (remembered in status) says it was fine, so the rollback still happens."""
    world = World(version="1.0.0", status={"revisions": {"current": "1.0.0", "previous": "", "since": ""}})
    world.cycle(seen(serving="1.0.0", rev={"1.0.0": CALM}), NOW)
    since = minutes(1).strftime("%Y-%m-%dT%H:%M:%SZ")
    world.body["spec"]["version"] = "1.1.0"
    world.body["status"]["revisions"] = {"current": "1.1.0", "previous": "1.0.0", "since": since}
    both_burn = seen(FIRE, dc={n: FIRE for n in DCS}, rev={"1.1.0": FIRE, "1.0.0": FIRE})
    world.cycle(both_burn, minutes(2))
    assert world.events.count("RolledBack") == 1


def record(kind: str, target: str, at: datetime.datetime, *, done: bool = False) -> dict[str, str]:
    return {LAST_ACTION_ANNOTATION: Recorded(kind, target, at, "", "it burned", done=done).annotation()}


def test_paused_with_an_interrupted_record_writes_nothing() -> None:
    annotations = {
        **record("drain", "dc-b", NOW - datetime.timedelta(hours=2)),
        "imageserver.dev/paused": "true",
    }
    world = World(mode="dryRun", annotations=annotations)
    verdict = world.cycle(SICK_B, NOW)
    assert verdict.effects == ()


@pytest.mark.parametrize(
    ("why", "world", "dropped"),
    [
        ("dry run", World(mode="dryRun", annotations=record("drain", "dc-b", NOW)), "mode is dryRun"),
        (
            "two hours old",
            World(annotations=record("drain", "dc-b", NOW - datetime.timedelta(hours=2))),
            "120 min",
        ),
        (
            "a person drained another since (maxDrained 1)",
            World(annotations={**record("drain", "dc-b", NOW), "imageserver.dev/drained": "dc-a"}),
            "at most 1",
        ),
        (
            "it would drain the last one",
            World(
                annotations={**record("drain", "dc-c", NOW), "imageserver.dev/drained": "dc-a,dc-b"},
                remediation={"drain": {"maxDrained": 3}},
            ),
            "last datacenter",
        ),
        ("a removed datacenter", World(annotations=record("drain", "dc-z", NOW)), "no longer one of"),
        (
            "the spec moved on",
            World(version="1.2.0", annotations=record("rollback", "1.0.0", NOW)),
            "moved on",
        ),
    ],
)
def test_an_interrupted_action_that_no_longer_applies_is_dropped_and_said(
    why: str, world: World, dropped: str
) -> None:
    before = world.serving(), world.annotations.get("imageserver.dev/drained")
    world.cycle(SICK_B, NOW)
    after = json.loads(world.annotations[LAST_ACTION_ANNOTATION])
    assert after["done"] is True and dropped in after["dropped"], why
    assert (world.serving(), world.annotations.get("imageserver.dev/drained")) == before
    assert world.events == ["ActionDropped"]
    assert world.notices and dropped in world.notices[0].reason + world.events[0] + after["dropped"]


def test_an_interrupted_action_that_still_applies_is_completed_once() -> None:
    world = World(annotations=record("drain", "dc-b", NOW - datetime.timedelta(seconds=20)))
    world.cycle(SICK_B, NOW)
    assert world.annotations["imageserver.dev/drained"] == "dc-b"
    assert json.loads(world.annotations[LAST_ACTION_ANNOTATION])["done"] is True
    world.cycle(SICK_B, minutes(0.25))
    assert world.events.count("Drained") == 1


def test_an_interrupted_action_already_taken_is_only_marked_done() -> None:
    world = World(annotations={**record("drain", "dc-b", NOW), "imageserver.dev/drained": "dc-b"})
    verdict = world.cycle(SICK_B, NOW)
    assert [type(e) for e in verdict.effects] == [engine.Annotate]
    assert json.loads(world.annotations[LAST_ACTION_ANNOTATION])["done"] is True


def test_a_silent_datacenter_is_unknown_and_ends_nothing() -> None:
    world = World()
    world.cycle(SICK_B, NOW)  # an incident opens, b is drained
    assert world.annotations["imageserver.dev/drained"] == "dc-b"
    # dc-c stops reporting (its frontends died) while a and b look fine.
    silent_c = seen(dc={"dc-a": CALM, "dc-b": CALM})
    for step in range(1, 12):
        verdict = world.cycle(silent_c, minutes(step))
    assert verdict.decision is not None and verdict.decision.slo_healthy == "Unknown"
    assert "dc-c" in verdict.decision.summary
    assert INCIDENT_ANNOTATION in world.annotations  # not resolved
    assert world.annotations["imageserver.dev/drained"] == "dc-b"  # not undrained
    slo = next(c for c in world.body["status"]["conditions"] if c["type"] == "SLOHealthy")
    assert (slo["status"], slo["reason"]) == ("Unknown", "CannotJudge")
    assert world.events.count("SLOUnknown") == 1  # said once, after the grace


def test_a_datacenter_without_weight_may_be_silent() -> None:
    world = World()
    world.body["spec"]["datacenters"][2]["weight"] = 0
    verdict = world.cycle(seen(dc={"dc-a": CALM, "dc-b": CALM}), NOW)
    assert verdict.decision is not None and verdict.decision.slo_healthy == "True"


def test_a_failed_judgement_is_a_condition_and_clears_itself() -> None:
    world = World()
    failed = engine.failed(world.body["status"], 2, "boom", NOW)
    assert failed is not None
    world.apply([failed], NOW)
    assert engine.failed(world.body["status"], 2, "boom", NOW) is None  # said once
    world.cycle(seen(), minutes(1))
    condition = next(c for c in world.body["status"]["conditions"] if c["type"] == "RemediationFailing")
    assert condition["status"] == "False"


def test_mode_off_watches_and_does_nothing_else() -> None:
    world = World(mode="off")
    for step in range(3):
        verdict = world.cycle(BAD_ROLLOUT, minutes(step))
    assert [type(e) for e in judge(world.subject(), BAD_ROLLOUT, NOW).effects] == []
    assert verdict.decision is not None and verdict.decision.actions == ()
    slo = next(c for c in world.body["status"]["conditions"] if c["type"] == "SLOHealthy")
    assert slo["status"] == "False"
    assert world.events == [] and world.notices == [] and world.serving() == {"1.1.0"}


OBSERVATIONS = {
    "calm": seen(),
    "calm on 1.0.0": seen(serving="1.0.0", rev={"1.0.0": CALM}),
    "bad rollout": BAD_ROLLOUT,
    "sick b": SICK_B,
    "no data": Observation(False),
    "silent c": seen(dc={"dc-a": CALM, "dc-b": CALM}),
}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(sorted(OBSERVATIONS)), st.integers(5, 120)), min_size=1, max_size=25),
    st.sampled_from(["auto", "dryRun"]),
)
def test_whatever_happens_the_automation_stays_within_its_brakes(
    story: list[tuple[str, int]], mode: str
) -> None:
    world = World(mode=mode)
    now = NOW
    acted: list[datetime.datetime] = []
    for name, gap in story:
        now += datetime.timedelta(seconds=gap)
        before = (
            world.events.count("RolledBack") + world.events.count("Drained") + world.events.count("Undrained")
        )
        verdict = world.cycle(OBSERVATIONS[name], now)
        after = (
            world.events.count("RolledBack") + world.events.count("Drained") + world.events.count("Undrained")
        )
        if after > before:
            acted.append(now)
        if name == "no data":
            assert after == before  # no action on missing data
        # The same ImageServer judged again by another replica at the same moment adds nothing
        # that changes the world: everything it needs to know was written.
        again = judge(world.subject(), OBSERVATIONS[name], now)
        assert not any(isinstance(e, engine.RollBack | engine.Drain) for e in again.effects)
        assert verdict.memory.notified == world.subject().memory.notified
        # Nobody is told before a write that proves the copy judged is current: a replica
        # whose watch lags tells nothing twice.
        for effects in (verdict.effects, again.effects):
            assert not any(isinstance(e, engine.TELLS) for e in unfenced(effects))
    drained = world.annotations.get("imageserver.dev/drained", "")
    assert len([d for d in drained.split(",") if d]) < len(DCS)  # never the last one
    if mode == "dryRun":
        assert not acted
    cooldown = datetime.timedelta(minutes=10)
    assert all(b - a >= cooldown for a, b in itertools.pairwise(acted))
    opened = [m.incident for m in world.notices if m.stage == "opened"]
    assert len(opened) == len(set(opened))
    told = [
        (m.incident, m.action) for m in world.notices if m.stage == "action" and (m.dry_run or not m.action)
    ]
    assert len(told) == len(set(told))


def unfenced(effects: Sequence[engine.Effect]) -> Sequence[engine.Effect]:
    """The effects carried out before the first write with a precondition."""
    writes = [i for i, e in enumerate(effects) if isinstance(e, engine.WRITES_WITH_PRECONDITION)]
    return effects[: writes[0]] if writes else effects


# -- what a review found: each a table of one ------------------------------------------------


def test_an_action_told_late_is_told_once_even_from_a_stale_copy() -> None:
    """A rollback taken, its telling cut short: told once. A replica whose watch has not yet
    brought the told mark judges the old copy: its first effect is a write onto that copy's
    version, which the API server refuses, before anyone is told again."""
    taken = Recorded("rollback", "1.0.0", NOW, "", "it burned", done=True, told=False)
    world = World(annotations={LAST_ACTION_ANNOTATION: taken.annotation()})
    stale = world.subject()
    world.cycle(seen(serving="1.0.0", rev={"1.0.0": CALM}), NOW)
    assert world.events.count("RolledBack") == 1
    assert "told" not in json.loads(world.annotations[LAST_ACTION_ANNOTATION])
    late = judge(stale, seen(serving="1.0.0", rev={"1.0.0": CALM}), minutes(0.25))
    assert isinstance(late.effects[0], engine.Fence)
    assert not any(isinstance(e, engine.TELLS) for e in unfenced(late.effects))


def test_two_drains_in_one_verdict_leave_both_drained() -> None:
    world = World(remediation={"drain": {"maxDrained": 2}})
    both = seen(FIRE, dc={"dc-a": CALM, "dc-b": FIRE, "dc-c": FIRE}, errors=10.0)
    world.cycle(both, NOW)
    assert world.annotations["imageserver.dev/drained"] == "dc-b,dc-c"
    assert world.events.count("Drained") == 2


def test_the_baseline_is_kept_in_a_shape_the_api_server_keeps() -> None:
    """A map of window → burn would be pruned to {} by a structural schema; a list of
    (window, burn rate) is stored as it is."""
    world = World()
    world.cycle(BAD_ROLLOUT, NOW)
    baselines = world.body["status"]["automation"]["baselines"]
    assert baselines[-1]["revision"] == "1.1.0" and baselines[-1]["pageLevel"] is True
    assert {"window": "5m", "burnRate": 50.0} in baselines[-1]["burn"]


def test_an_interrupted_action_waits_for_data_and_is_judged_by_the_policy() -> None:
    world = World(annotations=record("drain", "dc-b", NOW))
    assert world.cycle(Observation(False), NOW).effects == ()  # no data: it waits
    world.body["spec"]["remediation"]["drain"] = {"enabled": False}
    world.cycle(SICK_B, NOW)
    after = json.loads(world.annotations[LAST_ACTION_ANNOTATION])
    assert "no longer calls for it" in after["dropped"]
    assert "imageserver.dev/drained" not in world.annotations
    # A dropped action was never taken: it starts no cooldown.
    world.body["spec"]["remediation"]["drain"] = {"enabled": True}
    world.cycle(SICK_B, minutes(0.25))
    assert world.annotations["imageserver.dev/drained"] == "dc-b"


def test_a_notice_is_remembered_only_once_sent_and_a_tally_cleared_only_once_resolved() -> None:
    world = World(mode="dryRun")
    effects = world.cycle(BAD_ROLLOUT, NOW).effects
    told = next(
        i for i, e in enumerate(effects) if isinstance(e, engine.Notify) and e.message.stage == "action"
    )
    remembered = max(i for i, e in enumerate(effects) if isinstance(e, engine.WriteStatus))
    assert told < remembered
    calm = seen(dc={n: CALM for n in DCS})
    verdicts = [world.cycle(calm, minutes(step)) for step in range(1, 4)]
    resolving = next(
        v.effects for v in verdicts if any(isinstance(e, engine.ResolvePostmortem) for e in v.effects)
    )
    resolved = next(i for i, e in enumerate(resolving) if isinstance(e, engine.ResolvePostmortem))
    cleared = max(i for i, e in enumerate(resolving) if isinstance(e, engine.WriteStatus))
    last = resolving[cleared]
    assert isinstance(last, engine.WriteStatus)
    assert resolved < cleared and "tally" not in last.patch["automation"]


def test_an_opening_cut_short_is_finished_under_the_same_name() -> None:
    world = World()
    effects = judge(world.subject(), BAD_ROLLOUT, NOW).effects
    cut = next(i for i, e in enumerate(effects) if isinstance(e, engine.OpenPostmortem)) + 1
    world.apply(effects[:cut], NOW)  # the operator dies before the incident's annotation
    world.cycle(BAD_ROLLOUT, minutes(0.25))
    assert list(world.postmortems) == [world.annotations[INCIDENT_ANNOTATION]]


def test_an_action_taken_but_not_told_is_told_on_the_next_cycle() -> None:
    world = World()
    effects = judge(world.subject(), SICK_B, NOW).effects
    cut = next(i for i, e in enumerate(effects) if isinstance(e, engine.Drain)) + 1
    world.apply(effects[:cut], NOW)  # drained, then the operator died
    assert world.events.count("Drained") == 0
    world.cycle(SICK_B, minutes(0.25))
    world.cycle(SICK_B, minutes(0.5))
    assert world.events.count("Drained") == 1
    assert json.loads(world.annotations[LAST_ACTION_ANNOTATION]).get("told", True) is True


def test_a_notice_outside_an_incident_is_told_again_once_it_stopped_being_decided() -> None:
    since = (NOW - datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    healthy = [{"name": n, "healthySince": since} for n in DCS]
    status: dict[str, Any] = {
        "revisions": {"current": "1.1.0", "previous": "1.0.0", "since": ""},
        "automation": {"healthy": healthy},
    }
    world = World(mode="dryRun", annotations={"imageserver.dev/drained": "dc-b"}, status=status)
    fine = seen(dc={n: CALM for n in DCS})
    world.cycle(fine, NOW)
    world.cycle(fine, minutes(1))
    assert world.events.count("WouldUndrain") == 1
    world.cycle(seen(dc={"dc-a": CALM, "dc-b": FIRE, "dc-c": CALM}), minutes(2))  # b sick again
    world.body["status"]["automation"]["healthy"] = healthy
    world.cycle(fine, minutes(3))
    assert world.events.count("WouldUndrain") == 2


def test_a_hand_written_time_without_offset_stops_nothing() -> None:
    annotations = {
        LAST_ACTION_ANNOTATION: json.dumps(
            {"kind": "drain", "target": "dc-b", "at": "2026-11-28T11:59:50", "incident": "", "done": False}
        )
    }
    world = World(annotations=annotations)
    world.cycle(SICK_B, NOW)
    assert world.annotations["imageserver.dev/drained"] == "dc-b"


def test_capacity_insufficient_is_told_once_each_time_it_turns_true() -> None:
    def short(since: str) -> dict[str, Any]:
        return {
            "type": "CapacityInsufficient",
            "status": "True",
            "reason": "SpecShortOfPlan",
            "message": "the spec cannot carry spec.capacity: shards: short by 3 shards",
            "lastTransitionTime": since,
        }

    world = World()
    world.body["status"]["conditions"] = [short("2026-11-28T11:00:00Z")]
    for step in range(4):  # each cycle a leader reads the object afresh
        world.cycle(seen(), minutes(step * 0.25))
    told = [m for m in world.notices if m.stage == "capacity"]
    assert len(told) == 1
    assert "shards: short by 3 shards" in told[0].reason
    assert told[0].runbook == "runbooks/capacity-insufficient.md"

    # The reconcile loop clears it (the spec was raised): the notice is forgotten ...
    world.body["status"]["conditions"] = [{**short(""), "status": "False", "lastTransitionTime": "x"}]
    world.cycle(seen(), minutes(2))
    assert not any(n.startswith("capacity/") for n in world.body["status"]["automation"]["notified"])
    # ... and a later shortfall is a new one, told once more.
    world.body["status"]["conditions"] = [short("2026-11-28T12:05:00Z")]
    for step in range(3):
        world.cycle(seen(), minutes(3 + step))
    assert len([m for m in world.notices if m.stage == "capacity"]) == 2


def test_capacity_insufficient_is_not_told_while_paused() -> None:
    world = World(annotations={"imageserver.dev/paused": "true"})
    world.body["status"]["conditions"] = [
        {"type": "CapacityInsufficient", "status": "True", "message": "short", "lastTransitionTime": "t"}
    ]
    world.cycle(seen(), NOW)
    assert not [m for m in world.notices if m.stage == "capacity"]


def test_the_drain_judges_the_others_by_the_capacity_plan_while_spec_capacity_is_set() -> None:
    def drained_by(planned: float, *, declared: bool) -> list[str]:
        world = World()
        if declared:
            world.body["spec"]["capacity"] = {"uploadsPerSecond": 1}
        world.body["status"]["capacity"] = {"replicaCapacityRps": planned}
        verdict = world.cycle(SICK_B, NOW)
        assert verdict.decision is not None
        return [a.reason for a in verdict.decision.actions if a.kind == "drain"]

    # 50 requests/s onto dc-a and dc-c's 4 pods: 10 req/s a pod by the plan is too few ...
    assert drained_by(10.0, declared=True) == []
    # ... 1000 is plenty, and the reason says whose figure it was.
    (reason,) = drained_by(1000.0, declared=True)
    assert "1,000 requests/s per frontend pod by the capacity plan" in reason
    # Without spec.capacity a plan left in status is not used: the hand-set figure is.
    (reason,) = drained_by(10.0, declared=False)
    assert "by remediation.drain.replicaCapacityRps" in reason
