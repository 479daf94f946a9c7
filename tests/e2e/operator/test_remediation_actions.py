"""The SLO loop's actions on the real API server, told through the Slack stub.

Observations are given as data (the Prometheus side has its own integration test); the
ImageServer, its Postmortem, Events, annotations and Slack messages are real.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from imageserver_operator.adapters.kube import FIELD_MANAGER, SLO_FIELD_MANAGER, Kube, api_client
from imageserver_operator.adapters.notifications import SlackRouter
from imageserver_operator.adapters.store import Store
from imageserver_operator.core.evaluation import Budgets, Key
from imageserver_operator.core.incidents import LAST_ACTION_ANNOTATION
from imageserver_operator.core.policy import Observation
from imageserver_operator.loops.remediation import Remediator
from testbed.cluster import Cluster
from testbed.slack_stub import SlackStub, token_secret

CALM = {"5m": 0.1, "30m": 0.1, "1h": 0.1, "2h": 0.1, "6h": 0.1, "1d": 0.1, "3d": 0.1}
FIRE = {"5m": 500.0, "30m": 300.0, "1h": 40.0, "2h": 20.0, "6h": 7.0, "1d": 2.0, "3d": 0.7}


@pytest.fixture
def stub() -> Iterator[SlackStub]:
    with SlackStub() as running:
        yield running


@pytest.fixture
def kube(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Kube:
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    return Kube(api_client(), "remediation-test")


def setup(cluster: Cluster, namespace: str, mode: str = "auto") -> None:
    secret = token_secret()
    imgs = {
        "apiVersion": "imageserver.dev/v1alpha1",
        "kind": "ImageServer",
        "metadata": {"name": "photos"},
        "spec": {
            "version": "1.1.0",
            "datacenters": [{"name": "dc-a"}, {"name": "dc-b"}],
            "remediation": {"mode": mode},
            "notifications": {"slack": {"channel": "#oncall", "tokenSecretRef": {"name": "slack"}}},
        },
    }
    for obj in (secret, imgs):
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))
    # What the reconcile loop would have recorded: 1.1.0 replaced 1.0.0 ten minutes ago.
    since = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=10)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    status = {"status": {"revisions": {"current": "1.1.0", "previous": "1.0.0", "since": since}}}
    cluster.kubectl(
        "patch",
        "imgs",
        "photos",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )


class Loop:
    """A Remediator over the live ImageServer, its observations given per cycle."""

    def __init__(self, cluster: Cluster, kube: Kube, namespace: str, stub: SlackStub) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.store = Store()
        self.seen = Observation(False)
        self.now = datetime.datetime.now(datetime.UTC)
        self.remediator = Remediator(
            self.store,
            kube,
            self._observe,
            is_leader=lambda: True,
            notify=SlackRouter(self.store, kube, base_url=stub.base_url),
            clock=lambda: self.now,
        )

    def _observe(self, budgets: Mapping[Key, Budgets]) -> dict[Key, Observation]:
        return {key: self.seen for key in budgets}

    async def cycle(self, seen: Observation) -> dict[str, Any]:
        self.seen = seen
        self.now += datetime.timedelta(seconds=30)  # cycles half a minute apart
        self.store.imageserver_event("MODIFIED", self.imageserver())
        await self.remediator.cycle()
        return self.imageserver()

    def imageserver(self) -> dict[str, Any]:
        return dict(
            json.loads(self.cluster.kubectl("get", "imgs", "photos", "-n", self.namespace, "-o", "json"))
        )

    def events(self) -> list[str]:
        items = json.loads(self.cluster.kubectl("get", "events", "-n", self.namespace, "-o", "json"))["items"]
        return [e["reason"] for e in sorted(items, key=lambda e: e["lastTimestamp"] or "")]


async def settle(stub: SlackStub, count: int) -> None:
    for _ in range(100):
        if len(stub.messages()) >= count:
            return
        await asyncio.sleep(0.05)


def aborted(imageserver: Mapping[str, Any], *, to: str) -> bool:
    """Rolled back in status (every datacenter back to `to`), the spec left as applied."""
    rollout = imageserver["status"]["rollout"]
    return (rollout["phase"], rollout["stable"], imageserver["spec"]["version"]) == ("Aborted", to, "1.1.0")


def burning_revision() -> Observation:
    return Observation(
        True,
        50.0,
        FIRE,
        {"dc-a": FIRE, "dc-b": FIRE},
        {"1.1.0": FIRE, "1.0.0": CALM},
        errors_per_second=25.0,
        budget_spent=0.4,
    )


async def test_a_burning_fresh_revision_is_rolled_back_once_told_and_written_up(
    cluster: Cluster, imageserver_crd: str, namespace: str, kube: Kube, stub: SlackStub
) -> None:
    setup(cluster, namespace)
    loop = Loop(cluster, kube, namespace, stub)
    after = await loop.cycle(burning_revision())
    assert aborted(after, to="1.0.0")
    annotations = after["metadata"]["annotations"]
    recorded = json.loads(annotations["imageserver.dev/last-action"])
    assert (recorded["kind"], recorded["target"]) == ("rollback", "1.0.0")
    assert "rolling back to 1.0.0" in annotations["imageserver.dev/rollback-reason"]
    incident = annotations["imageserver.dev/incident"]

    # The next cycle still sees the burn (the rollout takes a moment): no second rollback.
    await loop.cycle(burning_revision())
    assert loop.events().count("RolledBack") == 1
    assert "IncidentOpened" in loop.events()

    assert loop.imageserver()["status"]["errorBudgetRemaining"] == "60%"
    for _ in range(3):
        after = await loop.cycle(
            Observation(
                True,
                50.0,
                CALM,
                {"dc-a": CALM, "dc-b": CALM},
                {"1.0.0": CALM},
                budget_spent=0.412,
                # Whichever revision the status names current yet, what serves is fine.
                by_datacenter_revision={
                    f"{dc}/{rev}": CALM for dc in ("dc-a", "dc-b") for rev in ("1.0.0", "1.1.0")
                },
            )
        )
    assert "imageserver.dev/incident" not in after["metadata"].get("annotations", {})
    assert after["status"]["errorBudgetRemaining"] == "59%"
    postmortem = json.loads(cluster.kubectl("get", "pm", incident, "-n", namespace, "-o", "json"))["spec"]
    assert postmortem["state"] == "Resolved"
    # Two burning cycles at 25 failed requests/s, counted as one 15 s cycle each.
    assert postmortem["impact"]["failedRequestsEstimate"] > 0
    assert postmortem["impact"]["errorBudgetConsumedPercent"] > 0
    events = [e["event"] for e in postmortem["timeline"]]
    assert events[0].startswith("incident opened") and events[-1].startswith("incident resolved")
    assert any(e.startswith("Rolled back 1.0.0: revision 1.1.0") for e in events)
    assert postmortem["resolution"].startswith("Rolled back 1.0.0: revision 1.1.0")  # what mitigated it
    slo = next(c for c in after["status"]["conditions"] if c["type"] == "SLOHealthy")
    assert slo["status"] == "True"

    metrics = loop.remediator.metrics
    assert metrics.actions.labels(kind="rollback", executed="true")._value.get() == 1
    assert metrics.decision_seconds._sum.get() > 0  # decisions were timed

    await settle(stub, 3)
    posted = stub.messages()
    assert [p["text"].split(": ", 1)[1] for p in posted] == [
        "photos is burning its error budget",
        "Rolled back 1.0.0",
        "Resolved: burn back under budget",
    ]
    assert posted[1]["thread_ts"] == posted[2]["thread_ts"] and "thread_ts" not in posted[0]


async def test_an_action_interrupted_by_a_crash_is_completed_once_not_decided_again(
    cluster: Cluster, imageserver_crd: str, namespace: str, kube: Kube, stub: SlackStub
) -> None:
    setup(cluster, namespace)
    # What a crash between recording and acting leaves behind.
    recorded = {
        "kind": "rollback",
        "target": "1.0.0",
        "at": datetime.datetime.now(datetime.UTC).isoformat(),
        "incident": "",
        "reason": "revision 1.1.0 burns the error budget (page level): rolling back to 1.0.0",
        "done": False,
    }
    cluster.kubectl(
        "annotate", "imgs", "photos", "-n", namespace, f"imageserver.dev/last-action={json.dumps(recorded)}"
    )
    loop = Loop(cluster, kube, namespace, stub)
    after = await loop.cycle(burning_revision())
    assert aborted(after, to="1.0.0")
    assert json.loads(after["metadata"]["annotations"]["imageserver.dev/last-action"])["done"] is True
    for _ in range(2):  # still burning while the rollout runs: the cooldown holds
        await loop.cycle(burning_revision())
    assert loop.events().count("RolledBack") == 1
    await settle(stub, 2)
    assert sum("completed after an operator restart" in m["text"] for m in stub.messages()) == 1


class BusyKube(Kube):
    """The reconcile loop answers the rollback while people are told: before each write of
    the told mark it writes its own status, so the version judged is always stale."""

    def annotate(
        self,
        namespace: str,
        name: str,
        annotations: dict[str, str | None],
        resource_version: str | None = None,
    ) -> str | None:
        record = json.loads(annotations.get(LAST_ACTION_ANNOTATION) or "{}")
        if record.get("done") is True and "told" not in record:  # the told mark
            for generation in range(3):
                assert self.patch_status(namespace, name, {"observedGeneration": generation}) is not None
        return super().annotate(namespace, name, annotations, resource_version)


async def test_a_rollback_is_told_once_however_busy_the_object_is(
    cluster: Cluster, imageserver_crd: str, namespace: str, kube: Kube, stub: SlackStub
) -> None:
    """The told mark is refused onto the version judged (the reconcile loop wrote since), and
    swapped in on the API server while the record is still the one told: nobody is told
    twice, and a record that changed meanwhile is never overwritten."""
    setup(cluster, namespace)
    busy = BusyKube(api_client(), "remediation-test")
    loop = Loop(cluster, busy, namespace, stub)
    await loop.cycle(burning_revision())
    told = loop.imageserver()["metadata"]["annotations"][LAST_ACTION_ANNOTATION]
    assert "told" not in json.loads(told), told
    for _ in range(2):
        await loop.cycle(burning_revision())
    assert loop.events().count("RolledBack") == 1, loop.events()
    await settle(stub, 2)
    assert sum(m["text"].endswith("Rolled back 1.0.0") for m in stub.messages()) == 1
    # The swap tests the record itself: another record, or none, is left as it is.
    assert kube.swap_annotation(namespace, "photos", LAST_ACTION_ANNOTATION, told + " ", "x") is None
    assert kube.swap_annotation(namespace, "photos", "imageserver.dev/absent", "", "x") is None
    assert loop.imageserver()["metadata"]["annotations"][LAST_ACTION_ANNOTATION] == told


async def test_dry_run_reports_and_changes_nothing(
    cluster: Cluster, imageserver_crd: str, namespace: str, kube: Kube, stub: SlackStub
) -> None:
    setup(cluster, namespace, mode="dryRun")
    loop = Loop(cluster, kube, namespace, stub)
    after = await loop.cycle(burning_revision())
    await loop.cycle(burning_revision())
    assert after["status"]["rollout"]["phase"] == "Complete"
    assert "imageserver.dev/last-action" not in after["metadata"]["annotations"]
    assert loop.events().count("WouldRollback") == 1
    await settle(stub, 2)
    assert stub.messages()[1]["text"].startswith("[dry run] ")


async def test_without_data_nothing_is_done_and_it_is_said_once(
    cluster: Cluster, imageserver_crd: str, namespace: str, kube: Kube, stub: SlackStub
) -> None:
    setup(cluster, namespace)
    loop = Loop(cluster, kube, namespace, stub)
    for _ in range(3):
        after = await loop.cycle(Observation(False))
    assert after["status"]["rollout"]["phase"] == "Complete"
    slo = next(c for c in after["status"]["conditions"] if c["type"] == "SLOHealthy")
    assert (slo["status"], slo["reason"]) == ("Unknown", "CannotJudge")
    assert loop.events().count("SLOUnknown") == 1
    await settle(stub, 1)
    assert [p["text"] for p in stub.messages()] == [
        "prod/photos: SLO cannot be judged: no automatic action".replace("prod", namespace)
    ]


def condition(type_: str, status: str) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": "Test",
        "message": "",
        "lastTransitionTime": "2026-11-28T00:00:00Z",
    }


def test_each_loop_owns_its_status_fields_and_a_stale_copy_writes_nothing(
    cluster: Cluster, imageserver_crd: str, namespace: str, kube: Kube
) -> None:
    setup(cluster, namespace)

    def live() -> dict[str, Any]:
        return dict(json.loads(cluster.kubectl("get", "imgs", "photos", "-n", namespace, "-o", "json")))

    read = live()["metadata"]["resourceVersion"]
    mine = {
        "observedGeneration": 1,
        "conditions": [condition("Ready", "True")],
        "datacenterSummary": "dc-a,dc-b",
    }
    version = kube.apply_status(namespace, "photos", mine, FIELD_MANAGER, read)
    assert version is not None
    slo = {"conditions": [condition("SLOHealthy", "False")], "errorBudgetRemaining": "40%"}
    assert kube.apply_status(namespace, "photos", slo, SLO_FIELD_MANAGER, version) is not None
    # A copy read before the SLO loop wrote is refused, whoever holds it.
    assert kube.apply_status(namespace, "photos", mine, FIELD_MANAGER, version) is None
    # The reconcile loop applies its part again: the SLO loop's fields stay as they are.
    mine["conditions"] = [condition("Ready", "False")]
    assert kube.apply_status(namespace, "photos", mine, FIELD_MANAGER, live()["metadata"]["resourceVersion"])
    status = live()["status"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Ready": "False", "SLOHealthy": "False"}
    assert status["errorBudgetRemaining"] == "40%"
    shown = json.loads(
        cluster.kubectl("get", "imgs", "photos", "-n", namespace, "-o", "json", "--show-managed-fields")
    )
    managers = {m["manager"] for m in shown["metadata"]["managedFields"] if m.get("subresource") == "status"}
    assert {FIELD_MANAGER, SLO_FIELD_MANAGER} <= managers
