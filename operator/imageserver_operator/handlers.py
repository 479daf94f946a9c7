"""kopf wiring, and nothing else: watch events feed the store and the queue; the
controller (started at start-up) does the work.

Only raw event handlers are used: they need no finalizer and write no progress, so the
operator adds nothing to the objects it watches. Progress and diff-base storage are still
set to our own annotation prefix in case a handler ever needs them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any, ClassVar

import kopf
from prometheus_client import CollectorRegistry, start_http_server

from imageserver_operator.adapters.kube import Kube, api_client
from imageserver_operator.adapters.leader import LeaderElection
from imageserver_operator.adapters.metrics import OperatorMetrics
from imageserver_operator.adapters.notifications import SlackRouter
from imageserver_operator.adapters.prom import Prometheus
from imageserver_operator.adapters.store import Store
from imageserver_operator.api.models import GROUP, VERSION
from imageserver_operator.loops.controller import Controller
from imageserver_operator.loops.remediation import Remediator

log = logging.getLogger(__name__)
MANAGED = {"app.kubernetes.io/managed-by": "imageserver-operator"}
CHILD_KINDS = (
    ("v1", "configmaps"),
    ("v1", "services"),
    ("apps/v1", "deployments"),
    ("apps/v1", "statefulsets"),
    ("policy/v1", "poddisruptionbudgets"),
    ("networking.k8s.io/v1", "networkpolicies"),
    ("gateway.networking.k8s.io/v1", "httproutes"),
    ("monitoring.coreos.com/v1", "servicemonitors"),
    ("monitoring.coreos.com/v1", "prometheusrules"),
)
STORE = Store()
REGISTRY = CollectorRegistry()


class Runtime:
    """What start-up builds and the handlers reach."""

    controller: ClassVar[Controller | None] = None
    election: ClassVar[LeaderElection | None] = None
    tasks: ClassVar[list[asyncio.Task[None]]] = []


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Silent watch stalls are kopf's best-known failure: make the server end every watch
    # and the client give up on a quiet connection, so streams are re-established.
    settings.watching.server_timeout = int(os.environ.get("IMAGESERVER_OPERATOR_WATCH_SECONDS", "300"))
    settings.watching.client_timeout = settings.watching.server_timeout + 30
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.enabled = False  # our Events say what happened; kopf's log echoes would not
    # No runtime scanning: it lists namespaces and watches CRDs cluster-wide, which a namespaced
    # operator may not (least privilege). Resources are discovered once at start-up; a child
    # API installed later is applied by the reconciler and watched after a restart.
    settings.scanning.disabled = True

    identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    kube = Kube(api_client(), identity)
    namespace = os.environ.get("IMAGESERVER_OPERATOR_NAMESPACE", "default")
    standalone = os.environ.get("IMAGESERVER_OPERATOR_LEADER_ELECTION", "true") == "false"
    lease_seconds = int(os.environ.get("IMAGESERVER_OPERATOR_LEASE_SECONDS", "30"))
    election = LeaderElection(
        kube.coordination,
        namespace,
        identity,
        duration_seconds=lease_seconds,
        renew_seconds=lease_seconds / 3,
    )
    metrics = OperatorMetrics(REGISTRY)
    port = int(os.environ.get("IMAGESERVER_OPERATOR_METRICS_PORT", "0"))
    if port:
        start_http_server(port, registry=REGISTRY)
    prometheus_url = os.environ.get("IMAGESERVER_OPERATOR_PROMETHEUS_URL", "")
    controller = Controller(
        STORE,
        kube,
        metrics=metrics,
        progressive=bool(prometheus_url),
        is_leader=(lambda: True) if standalone else (lambda: election.is_leader),
        resync_seconds=float(os.environ.get("IMAGESERVER_OPERATOR_RESYNC_SECONDS", "60")),
    )
    # A new leader reconciles and judges everything at once: it skipped all while a follower.
    election.on_elected.append(controller.enqueue_all)
    Runtime.controller = controller
    if prometheus_url:
        router = SlackRouter(
            STORE, kube, base_url=os.environ.get("IMAGESERVER_OPERATOR_SLACK_BASE_URL") or None
        )
        remediator = Remediator(
            STORE,
            kube,
            Prometheus(prometheus_url).observe,
            is_leader=controller.is_leader,
            notify=router,
            metrics=metrics,
            interval_seconds=float(os.environ.get("IMAGESERVER_OPERATOR_SLO_SECONDS", "15")),
        )
        election.on_elected.append(remediator.wake)
        Runtime.tasks.append(asyncio.create_task(remediator.run()))
    Runtime.election = None if standalone else election
    Runtime.tasks.insert(0, asyncio.create_task(controller.run()))
    if not standalone:
        Runtime.tasks.append(asyncio.create_task(election.run()))
    log.info("operator started", extra={"identity": identity, "leader_election": not standalone})


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    for task in Runtime.tasks:
        task.cancel()
    await asyncio.gather(*Runtime.tasks, return_exceptions=True)
    if Runtime.election is not None:
        await asyncio.to_thread(Runtime.election.release)


@kopf.on.event(GROUP, VERSION, "imageservers")
def imageserver_event(event: kopf.RawEvent, **_: Any) -> None:
    where = STORE.imageserver_event(event["type"] or "", dict(event["object"]))
    if Runtime.controller is not None:
        Runtime.controller.enqueue(where)


def _child_handler(api_version: str, plural: str) -> None:
    group, _, version = api_version.rpartition("/")

    @kopf.on.event(group, version, plural, labels=MANAGED, id=f"child-{plural}")
    def child_event(event: kopf.RawEvent, **_: Any) -> None:
        owner = STORE.child_event(event["type"] or "", dict(event["object"]))
        if owner is not None and Runtime.controller is not None:
            Runtime.controller.enqueue(owner)


for _api_version, _plural in CHILD_KINDS:
    _child_handler(_api_version, _plural)
