"""The remediation policy: one table of situations, and the safety properties for all of them."""

from __future__ import annotations

import datetime
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imageserver_operator.api.models import DrainPolicy, RemediationSpec
from imageserver_operator.core.policy import Action, Datacenter, Observation, State, decide, page_level

NOW = datetime.datetime(2026, 11, 21, 12, 0, tzinfo=datetime.UTC)
CALM = {"5m": 0.2, "30m": 0.2, "1h": 0.2, "2h": 0.2, "6h": 0.2, "1d": 0.2, "3d": 0.2}
FIRE = {"5m": 50.0, "30m": 40.0, "1h": 20.0, "2h": 10.0, "6h": 4.0, "1d": 1.0, "3d": 0.5}
DCS = (Datacenter("dc-a", 2), Datacenter("dc-b", 2), Datacenter("dc-c", 2))
EVERYWHERE = {dc.name: FIRE for dc in DCS}


def state(**changes: object) -> State:
    base = State(
        remediation=RemediationSpec(),
        datacenters=DCS,
        current_revision="1.1.0",
        previous_revision="1.0.0",
        current_since=NOW - datetime.timedelta(minutes=10),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def seen(
    service: dict[str, float] = CALM, rps: float = 50.0, **parts: dict[str, dict[str, float]]
) -> Observation:
    # Unless told otherwise, every datacenter reports, calm (one without data is silent: Unknown).
    datacenters = parts.get("dc", {dc.name: CALM for dc in DCS})
    return Observation(
        True,
        rps,
        service,
        datacenters,
        parts.get("rev", {}),
        # Unless told otherwise, every datacenter runs the current revision (1.1.0).
        by_datacenter_revision=parts.get(
            "by_dcrev", {f"{dc}/1.1.0": burn for dc, burn in datacenters.items()}
        ),
    )


def kinds(actions: tuple[Action, ...]) -> list[tuple[str, str, bool]]:
    return [(a.kind, a.target, a.execute) for a in actions]


@pytest.mark.parametrize(
    ("situation", "observed", "given_state", "expected", "healthy"),
    [
        ("all calm", seen(), state(), [], "True"),
        (
            "a fresh revision burns, the previous did not: roll back",
            seen(FIRE, rev={"1.1.0": FIRE, "1.0.0": CALM}),
            state(),
            [("rollback", "1.0.0", True)],
            "False",
        ),
        (
            "mid-rollout the old revision's pods fail through the new ones, but it was fine: roll back",
            seen(FIRE, rev={"1.1.0": FIRE, "1.0.0": FIRE}),
            state(previous_baseline=CALM),
            [("rollback", "1.0.0", True)],
            "False",
        ),
        (
            "an old revision burns: not the rollout's fault, page",
            seen(FIRE, rev={"1.1.0": FIRE}, dc=EVERYWHERE),
            state(current_since=NOW - datetime.timedelta(hours=3)),
            [("page", "", True)],
            "False",
        ),
        (
            "both revisions burn: rolling back would not help",
            seen(FIRE, rev={"1.1.0": FIRE, "1.0.0": FIRE}, dc=EVERYWHERE),
            state(),
            [("page", "", True)],
            "False",
        ),
        (
            "one datacenter burns, the others are healthy: drain it",
            seen(FIRE, dc={"dc-a": CALM, "dc-b": FIRE, "dc-c": CALM}),
            state(),
            [("drain", "dc-b", True)],
            "False",
        ),
        (
            "right after an incident everywhere the others' windows still burn, but they serve fine: drain",
            seen(
                FIRE,
                dc={"dc-a": {"5m": 5.0, "1h": 20.0}, "dc-b": FIRE, "dc-c": {"5m": 5.0, "1h": 20.0}},
                by_dcrev={"dc-a/1.1.0": CALM, "dc-b/1.1.0": FIRE, "dc-c/1.1.0": CALM},
            ),
            state(previous_revision=""),
            [("drain", "dc-b", True)],
            "False",
        ),
        (
            "a fresh revision burns only in one datacenter, all run it: the datacenter is sick, drain",
            seen(FIRE, rev={"1.1.0": FIRE}, dc={"dc-a": CALM, "dc-b": FIRE, "dc-c": CALM}),
            state(),
            [("drain", "dc-b", True)],
            "False",
        ),
        (
            "mid-rollout the new revision burns where it runs, the old one is fine: roll back",
            seen(FIRE, rev={"1.1.0": FIRE, "1.0.0": CALM}, dc={"dc-a": CALM, "dc-b": FIRE, "dc-c": CALM}),
            state(),
            [("rollback", "1.0.0", True)],
            "False",
        ),
        (
            "two datacenters burn: more than maxDrained, page instead",
            seen(FIRE, dc={"dc-a": CALM, "dc-b": FIRE, "dc-c": FIRE}),
            state(),
            [("page", "", True)],
            "False",
        ),
        (
            "everything burns: no single cause, page",
            seen(FIRE, dc={"dc-a": FIRE, "dc-b": FIRE, "dc-c": FIRE}),
            state(),
            [("page", "", True)],
            "False",
        ),
        (
            "too much traffic for the other two: no drain",
            seen(FIRE, rps=400, dc={"dc-a": CALM, "dc-b": FIRE, "dc-c": CALM}),
            state(),
            [("page", "", True)],
            "False",
        ),
        (
            "the same traffic within what the capacity plan says the pods carry: drain",
            seen(FIRE, rps=400, dc={"dc-a": CALM, "dc-b": FIRE, "dc-c": CALM}),
            state(planned_replica_rps=500.0),
            [("drain", "dc-b", True)],
            "False",
        ),
        (
            "the capacity plan says the pods carry less than the hand-set figure: no drain",
            seen(FIRE, rps=300, dc={"dc-a": CALM, "dc-b": FIRE, "dc-c": CALM}),
            state(planned_replica_rps=40.0),
            [("page", "", True)],
            "False",
        ),
        (
            "a drained datacenter healthy for the period: undrain",
            seen(dc={"dc-a": CALM, "dc-b": CALM, "dc-c": CALM}),
            state(
                datacenters=(
                    DCS[0],
                    Datacenter("dc-b", 2, True, NOW - datetime.timedelta(minutes=11)),
                    DCS[2],
                )
            ),
            [("undrain", "dc-b", True)],
            "True",
        ),
        (
            "a recovered datacenter's 1h window still holds its sickness: the 5m decides",
            seen(dc={"dc-a": CALM, "dc-b": {"5m": 0.0, "1h": 30.0}, "dc-c": CALM}),
            state(
                datacenters=(
                    DCS[0],
                    Datacenter("dc-b", 2, True, NOW - datetime.timedelta(minutes=11)),
                    DCS[2],
                )
            ),
            [("undrain", "dc-b", True)],
            "True",
        ),
        (
            "a drained datacenter healthy too briefly: wait",
            seen(dc={"dc-a": CALM, "dc-b": CALM, "dc-c": CALM}),
            state(
                datacenters=(DCS[0], Datacenter("dc-b", 2, True, NOW - datetime.timedelta(minutes=3)), DCS[2])
            ),
            [],
            "True",
        ),
        (
            "dry run decides and reports, does not act",
            seen(FIRE, rev={"1.1.0": FIRE, "1.0.0": CALM}),
            state(remediation=RemediationSpec(mode="dryRun")),
            [("rollback", "1.0.0", False)],
            "False",
        ),
        (
            "paused by annotation: report only",
            seen(FIRE, rev={"1.1.0": FIRE, "1.0.0": CALM}),
            state(paused=True),
            [("rollback", "1.0.0", False)],
            "False",
        ),
        (
            "inside the cooldown: no second action",
            seen(FIRE, rev={"1.1.0": FIRE, "1.0.0": CALM}),
            state(last_action_at=NOW - datetime.timedelta(minutes=4)),
            [],
            "False",
        ),
        (
            "Prometheus unreachable for a while: no action, tell once",
            Observation(False),
            state(unknown_since=NOW - datetime.timedelta(minutes=2)),
            [("notify_unknown", "", True)],
            "Unknown",
        ),
        (
            "Prometheus unreachable just now (a restart?): no action, not news yet",
            Observation(False),
            state(unknown_since=NOW - datetime.timedelta(seconds=20)),
            [],
            "Unknown",
        ),
        (
            "Prometheus unreachable, already told: silence",
            Observation(False),
            state(unknown_notified=True),
            [],
            "Unknown",
        ),
        (
            "too little traffic to judge",
            seen(FIRE, rps=0.01, rev={"1.1.0": FIRE}),
            state(unknown_since=NOW - datetime.timedelta(minutes=5)),
            [("notify_unknown", "", True)],
            "Unknown",
        ),
    ],
)
def test_what_the_policy_does(
    situation: str,
    observed: Observation,
    given_state: State,
    expected: list[tuple[str, str, bool]],
    healthy: str,
) -> None:
    decision = decide(observed, given_state, NOW)
    assert kinds(decision.actions) == expected, situation
    assert decision.slo_healthy == healthy
    assert all(a.reason for a in decision.actions)


def test_reasons_are_written_for_people() -> None:
    rollback = decide(seen(FIRE, rev={"1.1.0": FIRE, "1.0.0": CALM}), state(), NOW).actions[0]
    assert rollback.reason == (
        "revision 1.1.0, rolled out 10 min ago, burns 50.0x over 5m, 20.0x over 1h, 4.0x over 6h "
        "the error budget "
        "(page level) while 1.0.0 did not: rolling back to 1.0.0"
    )
    drain = decide(seen(FIRE, dc={"dc-a": CALM, "dc-b": FIRE, "dc-c": CALM}), state(), NOW).actions[0]
    assert "dc-b burns" in drain.reason and "dc-a, dc-c are healthy" in drain.reason
    assert (
        "absorb its traffic at 12% of their capacity (limit 80% with 20% headroom; 100 requests/s per "
        "frontend pod by remediation.drain.replicaCapacityRps)" in drain.reason
    )
    planned = decide(
        seen(FIRE, dc={"dc-a": CALM, "dc-b": FIRE, "dc-c": CALM}), state(planned_replica_rps=250.0), NOW
    ).actions[0]
    assert "at 5% of their capacity" in planned.reason
    assert "250 requests/s per frontend pod by the capacity plan" in planned.reason


# -- properties over any situation --------------------------------------------------------

windows = st.fixed_dictionaries({w: st.floats(0, 100) for w in ("5m", "30m", "1h", "2h", "6h", "1d", "3d")})


@st.composite
def situations(draw: st.DrawFn) -> tuple[Observation, State]:
    names = ["dc-a", "dc-b", "dc-c"][: draw(st.integers(1, 3))]
    dcs = tuple(
        Datacenter(
            n,
            draw(st.integers(1, 5)),
            draw(st.booleans()),
            NOW - datetime.timedelta(minutes=draw(st.integers(0, 60))),
        )
        for n in names
    )
    remediation = RemediationSpec(
        mode=draw(st.sampled_from(["auto", "dryRun", "off"])),
        drain=DrainPolicy(max_drained=draw(st.integers(0, 3)), headroom_percent=draw(st.integers(0, 90))),
    )
    observed = Observation(
        reachable=draw(st.booleans()),
        requests_per_second=draw(st.floats(0, 1000)),
        service=draw(st.one_of(st.just({}), windows)),
        by_datacenter={n: draw(windows) for n in names if draw(st.booleans())},
        by_revision={r: draw(windows) for r in ("1.0.0", "1.1.0") if draw(st.booleans())},
    )
    last = draw(st.one_of(st.none(), st.integers(0, 120)))
    given_state = State(
        remediation=remediation,
        datacenters=dcs,
        current_revision="1.1.0",
        previous_revision="1.0.0",
        current_since=NOW - datetime.timedelta(minutes=draw(st.integers(0, 180))),
        last_action_at=None if last is None else NOW - datetime.timedelta(minutes=last),
        paused=draw(st.booleans()),
    )
    return observed, given_state


@settings(max_examples=600)
@given(situations())
def test_never_drains_the_last_healthy_datacenter_nor_more_than_max_drained(
    case: tuple[Observation, State],
) -> None:
    observed, given_state = case
    drains = {a.target for a in decide(observed, given_state, NOW).actions if a.kind == "drain"}
    serving = [dc for dc in given_state.datacenters if not dc.drained and dc.name not in drains]
    if drains:
        assert serving, "drained the last serving datacenter"
        assert any(page_level(observed.by_datacenter.get(dc.name, {})) is False for dc in serving)
        drained_after = sum(dc.drained for dc in given_state.datacenters) + len(drains)
        assert drained_after <= given_state.remediation.drain.max_drained


@settings(max_examples=600)
@given(situations())
def test_never_acts_without_data(case: tuple[Observation, State]) -> None:
    observed, given_state = case
    decision = decide(observed, given_state, NOW)
    if (
        not observed.reachable
        or not observed.service
        or observed.requests_per_second < given_state.min_requests_per_second
    ):
        assert decision.slo_healthy == "Unknown"
        assert all(a.kind == "notify_unknown" for a in decision.actions)


@settings(max_examples=600)
@given(situations())
def test_never_acts_twice_inside_the_cooldown_and_only_when_allowed(case: tuple[Observation, State]) -> None:
    observed, given_state = case
    changes = [
        a for a in decide(observed, given_state, NOW).actions if a.kind in ("rollback", "drain", "undrain")
    ]
    last = given_state.last_action_at
    if last is not None and NOW - last < datetime.timedelta(minutes=10):
        assert changes == []
    if given_state.remediation.mode != "auto" or given_state.paused:
        assert not any(a.execute for a in changes)


def test_an_incident_is_about_users_now_not_what_the_long_windows_remember() -> None:
    rolled_back = state(current_revision="1.0.0", previous_revision="1.1.0")
    now_fine = {f"{dc.name}/1.0.0": CALM for dc in DCS}
    after = decide(seen(FIRE, by_dcrev=now_fine), rolled_back, NOW)
    assert after.slo_healthy == "False"  # the SLO windows still burn: the condition says so
    assert not after.paging and after.recovered  # but users are fine: the incident can end
    assert after.actions == ()  # and nobody is paged for what is over

    hurting = decide(seen(FIRE, by_dcrev={**now_fine, "dc-b/1.0.0": FIRE}), rolled_back, NOW)
    assert hurting.paging and not hurting.recovered

    drained_b = replace(rolled_back, datacenters=(DCS[0], Datacenter("dc-b", 2, True), DCS[2]))
    assert decide(seen(FIRE, by_dcrev={**now_fine, "dc-b/1.0.0": FIRE}), drained_b, NOW).recovered
    assert not decide(seen(FIRE), rolled_back, NOW).recovered  # no data is not "fine"
    rolling = replace(rolled_back, rolling_out=True)
    mid_rollout = decide(seen(FIRE, by_dcrev=now_fine), rolling, NOW)
    assert not mid_rollout.recovered and not mid_rollout.paging  # neither over nor a new incident


def test_a_datacenter_without_weight_neither_blocks_a_drain_nor_absorbs_traffic() -> None:
    quiet_c = replace(state(), datacenters=(DCS[0], DCS[1], Datacenter("dc-c", 2, weight=0)))
    sick_b = seen(FIRE, dc={"dc-a": CALM, "dc-b": FIRE}, rps=10)
    assert kinds(decide(sick_b, quiet_c, NOW).actions) == [("drain", "dc-b", True)]
    # Only dc-a is left to take the traffic: 2 frontends x 100 req/s, at 80 % at most.
    assert kinds(decide(replace(sick_b, requests_per_second=170), quiet_c, NOW).actions) == [
        ("page", "", True)
    ]


def test_a_quiet_datacenter_is_not_a_silent_one() -> None:
    """With the frontends' count reported, silence is no frontend heard from, not no request:
    a datacenter nobody happened to use in the short window is quiet, and judged as before."""
    quiet_c = seen(dc={"dc-a": CALM, "dc-b": CALM})
    heard = replace(quiet_c, frontends_by_datacenter={"dc-a": 2, "dc-b": 2, "dc-c": 2})
    assert decide(heard, state(), NOW).slo_healthy == "True"
    unheard = replace(quiet_c, frontends_by_datacenter={"dc-a": 2, "dc-b": 2})
    unknown = decide(unheard, state(), NOW)
    assert unknown.slo_healthy == "Unknown" and "dc-c" in unknown.summary and not unknown.recovered
