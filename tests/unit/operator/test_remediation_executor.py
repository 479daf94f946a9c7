"""The SLO loop's executor: each ImageServer in isolation, and nothing written onto a version
of an ImageServer that changed since it was judged."""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Callable, Mapping
from typing import Any, cast

from imageserver_operator.adapters.kube import Kube
from imageserver_operator.adapters.store import Store
from imageserver_operator.core.evaluation import Budgets, Key
from imageserver_operator.core.incidents import LAST_ACTION_ANNOTATION
from imageserver_operator.core.policy import Observation
from imageserver_operator.loops.remediation import Remediator

NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)
FIRE = {"5m": 50.0, "30m": 40.0, "1h": 20.0, "2h": 10.0, "6h": 4.0, "1d": 1.0, "3d": 0.5}
CALM = {window: 0.2 for window in FIRE}
BAD_ROLLOUT = Observation(
    True,
    50.0,
    FIRE,
    {"dc-a": FIRE},
    {"1.1.0": FIRE, "1.0.0": CALM},
    errors_per_second=25.0,
    by_datacenter_revision={"dc-a/1.1.0": FIRE},
)


class Refused(Exception):
    pass


class FakeKube:
    """What the executor calls, recorded; `broken` names fail, `moved` names have changed."""

    def __init__(self, *, broken: set[str] = frozenset(), moved: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.calls: list[tuple[str, str]] = []
        self.broken, self.moved = broken, moved

    def _write(self, what: str, name: str, version: str | None) -> str | None:
        if name in self.broken:
            raise Refused(f"{what} refused")
        if name in self.moved:
            return None  # 409: someone wrote since the version judged
        self.calls.append((what, name))
        return str(int(version or "0") + 1)

    def get_imageserver(self, _ns: str, name: str) -> dict[str, Any]:
        return imageserver(name)

    def apply_status(
        self, _ns: str, name: str, status: dict[str, Any], _manager: str, version: str | None
    ) -> str | None:
        aborted = (status.get("rollout") or {}).get("phase") == "Aborted"  # a rollback, in status
        return self._write("rollback" if aborted else "status", name, version)

    def annotate(
        self, _ns: str, name: str, _annotations: dict[str, Any], version: str | None = None
    ) -> str | None:
        return self._write("annotate", name, version)

    def event(self, body: Mapping[str, Any], _type: str, reason: str, _message: str) -> None:
        self.calls.append((f"event {reason}", body["metadata"]["name"]))

    def create_postmortem(self, _ns: str, name: str, _spec: dict[str, Any]) -> None:
        self.calls.append(("postmortem", name))

    def update_postmortem(
        self, _ns: str, name: str, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> None:
        spec = {"imageServer": name, "title": "t", "startedAt": "2026-11-28T11:59:00Z"}
        self.calls.append(("postmortem patched", name) if change(spec) else ("postmortem unchanged", name))


def imageserver(name: str) -> dict[str, Any]:
    since = (NOW - datetime.timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "metadata": {"name": name, "namespace": "prod", "uid": name, "generation": 1, "resourceVersion": "7"},
        "spec": {"version": "1.1.0", "datacenters": [{"name": "dc-a"}]},
        "status": {"revisions": {"current": "1.1.0", "previous": "1.0.0", "since": since}},
    }


def loop(kube: FakeKube, *names: str) -> Remediator:
    store = Store()
    for name in names:
        store.imageserver_event("ADDED", imageserver(name))

    def observe(budgets: Mapping[Key, Budgets]) -> dict[Key, Observation]:
        return {key: BAD_ROLLOUT for key in budgets}

    return Remediator(store, cast("Kube", kube), observe, is_leader=lambda: True, clock=lambda: NOW)


def test_one_broken_imageserver_does_not_stop_the_others() -> None:
    kube = FakeKube(broken={"first"})
    asyncio.run(loop(kube, "first", "second").cycle())
    assert ("rollback", "second") in kube.calls
    assert ("event RemediationFailing", "first") in kube.calls


def test_nothing_is_done_onto_a_version_that_changed_since_it_was_judged() -> None:
    kube = FakeKube(moved={"first"})
    asyncio.run(loop(kube, "first").cycle())
    assert kube.calls == []  # the status write was refused: no record, no rollback, no message


def test_a_replica_that_stops_leading_stops_acting() -> None:
    kube = FakeKube()
    leading = iter([True, True, False])
    remediator = loop(kube, "first")
    remediator.is_leader = lambda: next(leading, False)
    asyncio.run(remediator.cycle())
    assert ("rollback", "first") not in kube.calls


class ChangedAfterTheRollback(FakeKube):
    """The reconcile loop writes its status right after the rollback: the told mark onto the
    version judged is refused (409). The object keeps the annotations written; a swap is the
    API server's JSON Patch `test` of the record, then its write, whatever else changed."""

    def __init__(self, *, replaced: bool = False) -> None:
        super().__init__()
        self.annotations: dict[str, Any] = {}
        self.replaced = replaced  # another action's record took its place meanwhile
        self.refused = 0

    def annotate(
        self, _ns: str, name: str, annotations: dict[str, Any], version: str | None = None
    ) -> str | None:
        raw = str(annotations.get(LAST_ACTION_ANNOTATION) or "")
        told = bool(raw) and '"told"' not in raw  # a told record leaves the flag out
        if told and ("rollback", name) in self.calls and version is not None:
            self.refused += 1
            if self.replaced:
                self.annotations[LAST_ACTION_ANNOTATION] = '{"kind": "drain"}'
            return None  # 409: the reconcile loop wrote since
        self.annotations.update(annotations)
        return self._write("annotate", name, version)

    def swap_annotation(self, _ns: str, name: str, key: str, expected: str, value: str) -> str | None:
        if self.annotations.get(key) != expected:
            return None  # 422: the test failed
        self.annotations[key] = value
        self.calls.append(("swap", name))
        return "100"


def test_marking_an_action_told_survives_unrelated_writes() -> None:
    """A conflict on the told mark is swapped in while the record there is still the one
    told (the e2e test makes the real API server do it): people are not told twice."""
    kube = ChangedAfterTheRollback()
    asyncio.run(loop(kube, "first").cycle())
    assert kube.refused == 1 and ("swap", "first") in kube.calls
    recorded = json.loads(kube.annotations[LAST_ACTION_ANNOTATION])
    assert "told" not in recorded and recorded["kind"] == "rollback" and recorded["done"] is True
    # Written onto a version judged after the rollback: the rest waits for the next cycle.
    assert kube.calls[-1] == ("swap", "first")


def test_a_record_replaced_before_it_was_marked_is_left_alone() -> None:
    kube = ChangedAfterTheRollback(replaced=True)
    asyncio.run(loop(kube, "first").cycle())
    assert ("swap", "first") not in kube.calls
    assert kube.annotations[LAST_ACTION_ANNOTATION] == '{"kind": "drain"}'
