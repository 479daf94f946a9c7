"""Leader election: client-go's expiry rule (monotonic, never the holder's wall clock), the
renew deadline, and the election callbacks, against a fake Lease API."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import threading
from collections.abc import Callable
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client import ApiException

from imageserver_operator.adapters.kube import REQUEST_TIMEOUT, TimeoutApiClient
from imageserver_operator.adapters.leader import LeaderElection, LeaseView, Observation, may_take, observe

EPOCH = datetime.datetime(2026, 11, 21, 12, 0, tzinfo=datetime.UTC)
DURATION = 30
RENEW = 10.0
DEADLINE = 20.0


class Time:
    """One shared timeline; each replica reads it through its own clocks."""

    def __init__(self) -> None:
        self.now = 0.0


class Clocks:
    def __init__(self, time: Time, *, wall_skew: float = 0.0, monotonic_base: float = 0.0) -> None:
        self.time = time
        self.wall_skew = wall_skew
        self.monotonic_base = monotonic_base  # each process's monotonic clock starts elsewhere

    def wall(self) -> datetime.datetime:
        return EPOCH + datetime.timedelta(seconds=self.time.now + self.wall_skew)

    def monotonic(self) -> float:
        return self.monotonic_base + self.time.now


def meta(lease: client.V1Lease) -> client.V1ObjectMeta:
    assert lease.metadata is not None
    return lease.metadata


class FakeLeases:
    """CoordinationV1Api for one namespace: resourceVersion conflicts as the API server does
    them (409 on a stale version), and a no-op write keeps the resourceVersion."""

    def __init__(self) -> None:
        self.stored: client.V1Lease | None = None
        self.version = 0
        self.fail: Exception | None = None
        self.gate: threading.Event | None = None  # while set to an unset Event, calls hang
        self.gated: tuple[str, ...] = ("read", "create", "replace")  # which calls hang
        self.entered = threading.Event()
        self.timeouts: list[object] = []
        self.writes = 0

    def _call(self, verb: str, timeout: object) -> None:
        self.timeouts.append(timeout)
        if self.gate is not None and verb in self.gated:
            self.entered.set()
            assert self.gate.wait(timeout=10)
        if self.fail is not None:
            raise self.fail

    def _bump(self, lease: client.V1Lease) -> client.V1Lease:
        self.version += 1
        meta(lease).resource_version = str(self.version)
        self.stored = lease
        self.writes += 1
        return copy.deepcopy(lease)

    def read_namespaced_lease(self, name: str, namespace: str, _request_timeout: object = None) -> Any:
        self._call("read", _request_timeout)
        if self.stored is None or meta(self.stored).name != name:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.stored)

    def create_namespaced_lease(
        self, namespace: str, body: client.V1Lease, _request_timeout: object = None
    ) -> Any:
        self._call("create", _request_timeout)
        if self.stored is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        return self._bump(copy.deepcopy(body))

    def replace_namespaced_lease(
        self, name: str, namespace: str, body: client.V1Lease, _request_timeout: object = None
    ) -> Any:
        self._call("replace", _request_timeout)
        if self.stored is None:
            raise ApiException(status=404, reason="Not Found")
        if meta(body).resource_version != meta(self.stored).resource_version:
            raise ApiException(status=409, reason="Conflict")
        if body == self.stored:
            return copy.deepcopy(self.stored)
        return self._bump(copy.deepcopy(body))

    def touch(self) -> None:
        """Someone else edits the Lease (a label): only its resourceVersion changes."""
        assert self.stored is not None
        edited = copy.deepcopy(self.stored)
        meta(edited).labels = {"edited": str(self.version)}
        self._bump(edited)

    @property
    def holder(self) -> str:
        assert self.stored is not None
        assert self.stored.spec is not None
        return self.stored.spec.holder_identity or ""


def replica(leases: FakeLeases, identity: str, clocks: Clocks, **options: Any) -> LeaderElection:
    return LeaderElection(
        cast(client.CoordinationV1Api, leases),
        "operators",
        identity,
        duration_seconds=DURATION,
        renew_seconds=RENEW,
        **{"clock": clocks.wall, "monotonic": clocks.monotonic, **options},
    )


def leads(election: LeaderElection) -> bool:
    """is_leader, read afresh (a property: each read may differ)."""
    return election.is_leader


def record(holder: str = "other", renewed: float = 0.0, version: str = "1") -> LeaseView:
    return LeaseView(holder, EPOCH + datetime.timedelta(seconds=renewed), DURATION, version)


# The pure rule.


@pytest.mark.parametrize(
    ("lease", "first_observed", "now", "expected"),
    [
        (None, 0.0, 0.0, True),  # no lease yet
        (LeaseView("", None, DURATION), 100.0, 100.0, True),  # released
        (record(holder="me"), 100.0, 100.0, True),  # ours: renew
        (record(), 100.0, 100.0, False),  # just seen
        (record(), 100.0, 129.9, False),  # unchanged, but not for long enough
        (record(), 100.0, 130.0, True),  # unchanged for the lease duration
        (record(), 100.0, 500.0, True),
        (record(), 100.0, 99.0, False),  # seen after the round began
        (LeaseView("other", EPOCH, 5), 0.0, 5.0, True),  # the record's own duration counts
        (LeaseView("other", EPOCH, 60), 0.0, 59.0, False),
        # The holder's renewTime plays no part: an ancient one is no reason to take it.
        (LeaseView("other", EPOCH - datetime.timedelta(days=1), DURATION), 100.0, 101.0, False),
    ],
)
def test_may_take(lease: LeaseView | None, first_observed: float, now: float, expected: bool) -> None:
    assert may_take(lease, "me", first_observed, now) is expected


@pytest.mark.parametrize(
    ("seen", "expected_since"),
    [
        (record(), 10.0),  # the same record keeps its first sighting
        (record(renewed=5.0), 50.0),  # renewed
        (record(version="2"), 50.0),  # written by anyone, same spec
        (record(holder="another"), 50.0),  # changed hands
        (LeaseView("other", EPOCH, 60, "1"), 50.0),  # a new duration
    ],
)
def test_observe(seen: LeaseView, expected_since: float) -> None:
    before = Observation(record(), 10.0)
    assert observe(before, seen, 50.0) == Observation(seen, expected_since)
    assert observe(None, seen, 50.0) == Observation(seen, 50.0)


# Two replicas on a fake API.


def test_a_challenger_whose_wall_clock_is_60s_fast_never_takes_a_renewed_lease() -> None:
    time, leases = Time(), FakeLeases()
    holder = replica(leases, "holder", Clocks(time))
    challenger = replica(leases, "challenger", Clocks(time, wall_skew=60.0, monotonic_base=9_000.0))
    assert holder.try_acquire()
    for step in range(1, 601):  # ten minutes, polled every second
        time.now = float(step)
        if step % RENEW == 0:
            assert holder.try_acquire()
        assert not challenger.try_acquire()
        assert leads(holder)
        assert not leads(challenger)
    assert leases.holder == "holder"


def test_a_challenger_whose_wall_clock_is_60s_slow_takes_a_dead_lease_on_time() -> None:
    time, leases = Time(), FakeLeases()
    holder = replica(leases, "holder", Clocks(time))
    challenger = replica(leases, "challenger", Clocks(time, wall_skew=-60.0))
    assert holder.try_acquire()
    assert not challenger.try_acquire()  # first sighting at 0
    time.now = 29.9
    assert not challenger.try_acquire()
    time.now = 30.0
    assert challenger.try_acquire()
    assert leads(challenger)
    assert leases.holder == "challenger"
    assert not holder.try_acquire()
    assert not leads(holder)


def test_an_unchanged_record_counts_from_when_this_replica_first_saw_it() -> None:
    time, leases = Time(), FakeLeases()
    holder = replica(leases, "holder", Clocks(time))
    assert holder.try_acquire()  # written at 0, then the holder dies
    late = replica(leases, "late", Clocks(time))
    time.now = 25.0
    assert not late.try_acquire()  # started after the last renewal: cannot know how old it is
    time.now = 54.9
    assert not late.try_acquire()
    time.now = 55.0
    assert late.try_acquire()


def test_a_changed_record_restarts_the_observation() -> None:
    time, leases = Time(), FakeLeases()
    holder = replica(leases, "holder", Clocks(time))
    challenger = replica(leases, "challenger", Clocks(time))
    assert holder.try_acquire()
    assert not challenger.try_acquire()  # first sighting at 0
    time.now = 20.0
    assert holder.try_acquire()  # renewed
    time.now = 29.0
    assert not challenger.try_acquire()  # sees the renewal: from 29 now
    time.now = 40.0
    leases.touch()  # only the resourceVersion changes
    time.now = 41.0
    assert not challenger.try_acquire()  # from 41 now
    time.now = 70.9
    assert not challenger.try_acquire()
    time.now = 71.0
    assert challenger.try_acquire()


def test_a_leader_whose_renewals_fail_stops_before_its_lease_can_expire() -> None:
    time, leases = Time(), FakeLeases()
    leader = replica(leases, "leader", Clocks(time))
    challenger = replica(leases, "challenger", Clocks(time))
    assert leader.try_acquire()
    assert not challenger.try_acquire()
    leases.fail = ApiException(status=500, reason="etcd timeout")
    for step in range(1, 400):
        time.now = step / 10
        if step % 10 == 0:
            with pytest.raises(ApiException):
                leader.try_acquire()
        assert leads(leader) is (time.now < DEADLINE)
    leases.fail = None
    time.now = 30.0
    assert challenger.try_acquire()
    assert leads(challenger)
    assert not leader.try_acquire()
    assert not leads(leader)


def test_a_leader_whose_renewal_hangs_stops_before_its_lease_can_expire() -> None:
    time, leases = Time(), FakeLeases()
    leader = replica(leases, "leader", Clocks(time))
    assert leader.try_acquire()
    time.now = RENEW
    leases.gate = threading.Event()
    failures: list[BaseException] = []

    def renew() -> None:
        try:
            leader.try_acquire()
        except Exception as error:
            failures.append(error)

    thread = threading.Thread(target=renew)
    thread.start()
    try:
        assert leases.entered.wait(timeout=5)
        assert leads(leader)
        time.now = DEADLINE - 0.1
        assert leads(leader)
        time.now = DEADLINE
        assert thread.is_alive()
        assert not leads(leader)  # while the call still hangs, well before DURATION
    finally:
        leases.fail = TimeoutError("read timed out")
        leases.gate.set()
        thread.join(timeout=5)
    assert failures
    assert not leads(leader)


def test_a_renewal_that_lands_late_still_counts_from_when_it_was_sent() -> None:
    time, leases = Time(), FakeLeases()
    leader = replica(leases, "leader", Clocks(time))
    assert leader.try_acquire()
    time.now = RENEW
    leases.gate, leases.gated = threading.Event(), ("replace",)
    thread = threading.Thread(target=leader.try_acquire)
    thread.start()
    assert leases.entered.wait(timeout=5)
    time.now = DEADLINE + 1
    assert not leads(leader)
    leases.gate.set()
    thread.join(timeout=5)
    # Sent at 10: no challenger can have seen the new record before then.
    assert leads(leader)
    assert leader.terms == 2  # it stopped acting meanwhile: a new term
    time.now = RENEW + DEADLINE
    assert not leads(leader)


def test_a_no_op_write_is_no_renewal() -> None:
    time, leases = Time(), FakeLeases()
    leader = replica(leases, "leader", Clocks(time), clock=lambda: EPOCH)
    assert leader.try_acquire()
    time.now = RENEW
    assert not leader.try_acquire()  # the same renewTime: the record did not change
    time.now = DEADLINE
    assert not leads(leader)


def test_release_hands_the_lease_over_at_once() -> None:
    time, leases = Time(), FakeLeases()
    leader = replica(leases, "leader", Clocks(time))
    challenger = replica(leases, "challenger", Clocks(time))
    assert leader.try_acquire()
    assert not challenger.try_acquire()
    time.now = 1.0
    leader.release()
    assert not leads(leader)
    assert leases.holder == ""
    assert challenger.try_acquire()
    assert not leader.try_acquire()  # a round after the release takes nothing back


def test_a_release_raced_by_a_renewal_in_flight_still_hands_the_lease_over() -> None:
    """The renewal thread outlives its cancelled task: its write may land between the
    release's read and write, which then gets a 409 and must read again."""
    time, leases = Time(), FakeLeases()
    leader = replica(leases, "leader", Clocks(time))
    assert leader.try_acquire()
    read = leases.read_namespaced_lease
    raced: list[bool] = []

    def read_then_renewal_lands(name: str, namespace: str, _request_timeout: object = None) -> Any:
        lease = read(name, namespace, _request_timeout)
        if not raced:
            raced.append(True)
            leases.touch()
        return lease

    leases.read_namespaced_lease = read_then_renewal_lands  # type: ignore[method-assign]
    leader.release()
    assert leases.holder == ""


def test_a_release_gives_up_on_an_api_error_without_raising(caplog: pytest.LogCaptureFixture) -> None:
    time, leases = Time(), FakeLeases()
    leader = replica(leases, "leader", Clocks(time))
    assert leader.try_acquire()
    leases.fail = ApiException(status=500, reason="etcd timeout")
    leader.release()
    assert not leads(leader)
    assert "could not release the lease: 500 etcd timeout" in caplog.text


def test_every_lease_call_has_a_timeout_under_the_renew_deadline() -> None:
    time, leases = Time(), FakeLeases()
    leader = replica(leases, "leader", Clocks(time))
    assert leader.try_acquire()
    time.now = RENEW
    assert leader.try_acquire()
    leader.release()
    assert len(leases.timeouts) == 6
    assert all(isinstance(t, float) and 0 < t < DEADLINE for t in leases.timeouts)


@pytest.mark.parametrize(
    "options",
    [
        {"renew_seconds": 20.0},  # not under the deadline
        {"renew_deadline_seconds": 30.0},  # not under the lease duration
        {"request_timeout_seconds": 25.0},
    ],
)
def test_unsafe_timings_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="deadline"):
        leases = cast(client.CoordinationV1Api, FakeLeases())
        LeaderElection(leases, "operators", "me", duration_seconds=DURATION, **options)


# The election loop.


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.002)


async def test_on_elected_callbacks_all_run_once_per_election() -> None:
    time, leases = Time(), FakeLeases()
    calls: list[str] = []

    def broken() -> None:
        calls.append("broken")
        raise RuntimeError("one callback fails")

    election = LeaderElection(
        cast(client.CoordinationV1Api, leases),
        "operators",
        "leader",
        duration_seconds=DURATION,
        renew_seconds=0.001,
        clock=lambda: EPOCH + datetime.timedelta(seconds=leases.writes),  # a new renewTime each write
        monotonic=Clocks(time).monotonic,
        on_elected=[lambda: calls.append("enqueue_all"), broken],
    )
    election.on_elected.append(lambda: calls.append("wake"))
    task = asyncio.create_task(election.run())
    try:
        await asyncio.wait_for(_until(lambda: leases.writes >= 5), 5)
        assert calls == ["enqueue_all", "broken", "wake"]
        leases.fail = ApiException(status=503, reason="unavailable")
        time.now = DEADLINE  # no renewal for the deadline: it stopped acting
        failed = len(leases.timeouts)
        await asyncio.wait_for(_until(lambda: len(leases.timeouts) >= failed + 3), 5)
        assert not leads(election)
        leases.fail = None
        await asyncio.wait_for(_until(lambda: leases.writes >= 10), 5)
        assert leads(election)
        assert calls == ["enqueue_all", "broken", "wake"] * 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# Any skew, any schedule.


@settings(max_examples=200, deadline=None)
@given(
    wall_skew=st.floats(-3600, 3600),
    monotonic_base=st.floats(-1e6, 1e6),
    renewals=st.lists(st.floats(0.01, DURATION - 0.01), min_size=1, max_size=30),
    polls=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=60),
)
def test_a_challenger_never_takes_a_lease_renewed_faster_than_its_duration(
    wall_skew: float, monotonic_base: float, renewals: list[float], polls: list[float]
) -> None:
    time, leases = Time(), FakeLeases()
    holder = replica(leases, "holder", Clocks(time))
    challenger = replica(
        leases, "challenger", Clocks(time, wall_skew=wall_skew, monotonic_base=monotonic_base)
    )
    assert holder.try_acquire()
    renewed_at = [sum(renewals[: i + 1]) for i in range(len(renewals))]
    events = sorted(
        [(at, "holder") for at in renewed_at] + [(share * renewed_at[-1], "challenger") for share in polls]
    )
    for at, who in events:
        time.now = at
        if who == "holder":
            assert holder.try_acquire()
        else:
            assert not challenger.try_acquire()
    assert leases.holder == "holder"


@settings(max_examples=200, deadline=None)
@given(
    skews=st.tuples(st.floats(-3600, 3600), st.floats(-3600, 3600)),
    steps=st.lists(
        st.tuples(st.sampled_from([0, 1]), st.floats(0.0, 2 * DURATION), st.booleans()),
        min_size=1,
        max_size=60,
    ),
)
def test_two_replicas_never_both_lead(
    skews: tuple[float, float], steps: list[tuple[int, float, bool]]
) -> None:
    time, leases = Time(), FakeLeases()
    replicas = [
        replica(leases, f"replica-{i}", Clocks(time, wall_skew=skew, monotonic_base=1000.0 * i))
        for i, skew in enumerate(skews)
    ]
    for who, wait, fails in steps:
        time.now += wait
        leases.fail = ApiException(status=500) if fails else None
        with contextlib.suppress(ApiException):
            replicas[who].try_acquire()
        assert not all(leads(r) for r in replicas)


# Every API call has a timeout.


class Sent(Exception):
    pass


def test_the_api_client_gives_every_request_a_default_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    api = TimeoutApiClient()
    seen: list[object] = []

    def request(*_: object, _request_timeout: object = None, **__: object) -> None:
        seen.append(_request_timeout)
        raise Sent

    monkeypatch.setattr(api.rest_client, "request", request)
    leases = client.CoordinationV1Api(api)
    with pytest.raises(Sent):
        leases.read_namespaced_lease("imageserver-operator", "operators")
    with pytest.raises(Sent):
        leases.read_namespaced_lease("imageserver-operator", "operators", _request_timeout=2.5)
    with pytest.raises(Sent):
        api.call_api("GET", "https://kubernetes.invalid/version")
    assert seen == [REQUEST_TIMEOUT, 2.5, REQUEST_TIMEOUT]
