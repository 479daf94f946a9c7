"""One ImageServer served for real on the test bed, with the operator in the loop: the
acceptance tests of the SLO loop and `make demo` both play their incidents on it.

Started in the order a real installation comes up: the Slack token Secret, the pod runner,
the operator (reconcile only), the ImageServer, Prometheus with the rule file the operator
rendered into the `<name>-slo-rules` ConfigMap and a file_sd list of the pod processes, a
seed upload, the Gateway's traffic, and then the operator again with its SLO loop (it judges
only once Prometheus has something to judge).

On the real nodes (`in_cluster`), kubelets run the pods (`RealPods` follows them) and the
operator is the chart's pod, installed by the caller once Prometheus' and Slack's addresses
are known: they listen where pods reach the host. Its SLO loop runs from the start and
judges nothing until Prometheus has data.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from testbed.cluster import Cluster
from testbed.gateway import Gateway
from testbed.nodes import HOST_IP
from testbed.operators import OperatorProcesses
from testbed.podrunner import PodRunner
from testbed.pods import Pods
from testbed.prometheus import Prometheus
from testbed.realpods import RealPods
from testbed.slack_stub import SlackStub

IMAGESERVERS = "/apis/imageserver.dev/v1alpha1"


def small_jpeg(n: int) -> bytes:
    """A distinct small photo for upload number n (Pillow: the project's own dependency)."""
    from PIL import Image  # noqa: PLC0415 - the test bed's cluster part must work without it

    image = Image.new("RGB", (64, 48), ((n * 37) % 256, (n * 91) % 256, (n * 53) % 256))
    image.putpixel((n % 64, (n // 64) % 48), (255 - (n % 256), n % 256, 128))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


class Mission:
    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        workdir: Path,
        spec: Mapping[str, Any],
        *,
        name: str = "shop",
        faults: Mapping[str, float] | None = None,
        fault_roles: tuple[str, ...] = ("frontend", "storage"),
        per_second: float = 20.0,
        slo_seconds: float = 2.0,
        operator_env: Mapping[str, str] | None = None,
        operator_kubeconfig: Path | None = None,
        in_cluster: Callable[[str, str], None] | None = None,
        say: Callable[[str], None] = lambda _line: None,
    ) -> None:
        """`in_cluster`: the pods run on the real nodes, and this installs the operator in the
        cluster, given Prometheus' and Slack's URLs (faults are then the images' own)."""
        self.cluster = cluster
        self.namespace = namespace
        self.workdir = workdir
        self.spec = dict(spec)
        self.name = name
        self.per_second = per_second
        self.slo_seconds = slo_seconds
        self.operator_env = dict(operator_env or {})
        self.say = say
        self.in_cluster = in_cluster
        self.pods: Pods
        if in_cluster is None:
            self.pods = PodRunner(
                cluster, namespace, workdir / "pods", faults=dict(faults or {}), fault_roles=fault_roles
            )
        else:
            assert not faults, "a real pod's faults are its image's"
            self.pods = RealPods(cluster, namespace, workdir / "pods")
        self.operators = OperatorProcesses(cluster, namespace, workdir / "operators", operator_kubeconfig)
        self.host = "127.0.0.1" if in_cluster is None else HOST_IP  # where pods reach the host
        self.stub = SlackStub(host=self.host)
        self.prometheus: Prometheus | None = None
        self.gateway: Gateway | None = None

    @property
    def runner(self) -> PodRunner:
        """The pod runner, for what only it can say (its processes' logs)."""
        assert isinstance(self.pods, PodRunner), "the real nodes run these pods"
        return self.pods

    # -- bring-up --------------------------------------------------------------------------

    def start(self) -> Mission:
        self.stub.start()
        self.cluster.kubectl(
            "create", "secret", "generic", "slack", "-n", self.namespace, "--from-literal=token=xoxb-test"
        )
        self.pods.start()
        rules = self.workdir / "rules.yml"
        prometheus = None
        if self.in_cluster is None:
            self.operators.start()
        else:  # the chart names Prometheus' address, so it is chosen first (and free till then)
            prometheus = self._prometheus(rules)
            self.in_cluster(prometheus.url, self.stub.base_url)
        self.say("operator reconciling; applying the ImageServer")
        self.apply()
        ready = "120s" if self.in_cluster is None else "300s"  # real volumes and containers
        self.cluster.kubectl(
            "wait", "--for=condition=Ready", f"--timeout={ready}", f"imgs/{self.name}", "-n", self.namespace
        )
        rules.write_text(self._rule_file())
        self.prometheus = (prometheus or self._prometheus(rules)).start()
        self.pods.wait_healthy(self._pods(), timeout=90)
        frontends = sum(int(dc.get("frontendReplicas", 2)) for dc in self.spec["datacenters"])
        self.pods.wait_for_frontends(frontends, timeout=30)  # ready, and scraped: they take traffic
        where = "imageserver processes" if self.in_cluster is None else "imageserver containers"
        self.say(f"{self.pods.count()} {where} healthy; Prometheus scraping them")
        seed = self._seed()
        self.gateway = Gateway(
            self.cluster, self.namespace, self.name, self.pods, small_jpeg, per_second=self.per_second
        )
        self.gateway.uploaded.update(seed)
        self.gateway.start()
        if self.in_cluster is None:
            self.operators.stop_all()
            self.start_operator()
        self.say(f"traffic flowing at {self.per_second:g} req/s; operator watching the SLOs")
        return self

    def _prometheus(self, rules: Path) -> Prometheus:
        return Prometheus(
            [
                {
                    # Each target's own `job` label (its ImageServer's) replaces this name on its series.
                    "job_name": "imageserver",
                    "file_sd_configs": [{"files": [str(self.pods.targets)], "refresh_interval": "1s"}],
                }
            ],
            [rules],
            workdir=self.workdir / "prometheus",
            host=self.host,
        )

    def start_operator(self, env: Mapping[str, str] | None = None) -> None:
        """The operator with its SLO loop (again, after a crash)."""
        assert self.prometheus is not None
        self.operators.start(
            extra=[
                "--prometheus-url",
                self.prometheus.url,
                "--slo-seconds",
                f"{self.slo_seconds:g}",
                "--slack-base-url",
                self.stub.base_url,
            ],
            env={**self.operator_env, **(env or {})},
        )

    def _rule_file(self) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            configmap = self.cluster.read(self._path("configmaps", f"{self.name}-slo-rules"), missing_ok=True)
            text = str((configmap or {}).get("data", {}).get("rules.yml", ""))
            if text.startswith("groups"):
                return text
            time.sleep(0.5)
        raise TimeoutError(f"the operator rendered no {self.name}-slo-rules ConfigMap")

    def _pods(self) -> int:
        return len(self._mine("pods"))

    def _seed(self) -> dict[str, str]:
        """One upload, retried while frontends' shard maps catch up (a 503), as a client would."""
        data = small_jpeg(0)
        frontend = self.pods.wait_for_frontends(1)[0]
        last = ""
        for _ in range(60):
            request = urllib.request.Request(f"{frontend.url}/v1/images", data=data)
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    return {json.loads(answer.read())["id"]: hashlib.sha256(data).hexdigest()}
            except OSError as error:
                last = str(error)
            time.sleep(0.5)
        raise RuntimeError(f"the seed upload never succeeded: {last}")

    # -- the story -------------------------------------------------------------------------

    def apply(self, **changes: Any) -> None:
        self.spec.update(changes)
        body = {
            "apiVersion": "imageserver.dev/v1alpha1",
            "kind": "ImageServer",
            "metadata": {"name": self.name},
            "spec": self.spec,
        }
        self.cluster.kubectl("apply", "-n", self.namespace, "-f", "-", input=json.dumps(body))

    def imageserver(self) -> dict[str, Any]:
        return dict(self.cluster.read(self._path("imageservers", self.name, IMAGESERVERS)))

    def serving(self) -> dict[str, str]:
        """The revision each datacenter's frontends are rendered at (its Deployment's pod
        template), which a rollback changes: the spec stays as the user applied it."""
        deployments = self._mine("deployments", "/apis/apps/v1")
        labels = [d["spec"]["template"]["metadata"]["labels"] for d in deployments]
        return {p["imageserver.dev/datacenter"]: p["imageserver.dev/revision"] for p in labels}

    def settled_on(self, revision: str) -> bool:
        """Every pod of the ImageServer is at `revision` with its process running, and no
        replaced process is still on its way out: a rollout is over for users too."""
        pods = self._mine("pods")
        names = {p["metadata"]["name"] for p in pods}
        revisions = {
            e.get("value")
            for p in pods
            for e in p["spec"]["containers"][0].get("env", [])
            if e["name"] == "IMAGESERVER_REVISION"
        }
        return (
            revisions == {revision}
            and self.pods.settled(names)
            and len(self.pods.frontends()) == len(self.pods.frontends(routable=False))
        )

    def rollout(self) -> dict[str, Any]:
        return dict(self.imageserver().get("status", {}).get("rollout") or {})

    def rolled_back(self, to: str) -> bool:
        """Every datacenter runs `to` again, the rollout aborted in status."""
        return self.rollout().get("phase") == "Aborted" and set(self.serving().values()) == {to}

    def annotations(self) -> dict[str, str]:
        return dict(self.imageserver()["metadata"].get("annotations") or {})

    def events(self) -> list[dict[str, Any]]:
        items = self.cluster.read(self._path("events"))["items"]
        return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    def reasons(self) -> list[str]:
        return [str(e["reason"]) for e in self.events()]

    def events_of(self, reason: str) -> list[str]:
        """The messages of the Events with `reason`, oldest first: what a failed count shows."""
        return [str(e.get("message", "")) for e in self.events() if e["reason"] == reason]

    def postmortems(self) -> list[dict[str, Any]]:
        return list(self.cluster.read(self._path("postmortems", group=IMAGESERVERS))["items"])

    def weights(self) -> dict[str, int]:
        assert self.gateway is not None
        self.gateway.refresh()
        return dict(self.gateway.weights)

    # -- reads (straight from the API: see Cluster.read) --------------------------------------

    def _path(self, plural: str, name: str = "", group: str = "/api/v1") -> str:
        return f"{group}/namespaces/{self.namespace}/{plural}" + (f"/{name}" if name else "")

    def _mine(self, plural: str, group: str = "/api/v1") -> list[dict[str, Any]]:
        selector = quote(f"app.kubernetes.io/instance={self.name}")
        return list(self.cluster.read(f"{self._path(plural, group=group)}?labelSelector={selector}")["items"])

    def until(self, what: str, check: Callable[[], bool], timeout: float, poll: float = 1.0) -> float:
        """Seconds until check() holds; TimeoutError naming `what` when it never does."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if check():
                return time.monotonic() - started
            time.sleep(poll)
        raise TimeoutError(f"not within {timeout:.0f}s: {what}")

    def holds(self, what: str, check: Callable[[], bool], seconds: float, poll: float = 2.0) -> None:
        """check() stays true for `seconds`; AssertionError naming `what` when it does not."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not check():
                raise AssertionError(f"no longer true: {what}")
            time.sleep(poll)

    def errors_seen(self, selector: str, *, fresh: bool = False) -> bool:
        """Prometheus has scraped a 500 (the faults' answer) from processes matching the label
        selector; `fresh`: any 5xx in the last 10 s (a network fault's 503s, apart from those
        a rollout left on the same counters)."""
        assert self.prometheus is not None
        if fresh:
            query = f'increase(imageserver_http_requests_total{{code=~"5..", {selector}}}[10s]) > 0'
        else:
            query = f'imageserver_http_requests_total{{code="500", {selector}}} > 0'
        return bool(self.prometheus.query(query))

    def messages(self, containing: str = "") -> list[dict[str, Any]]:
        return [m for m in self.stub.messages() if containing in m.get("text", "")]

    def datacenters(self) -> Sequence[str]:
        return [dc["name"] for dc in self.spec["datacenters"]]

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        self.operators.stop_all()
        self.pods.stop()
        if self.prometheus is not None:
            self.prometheus.stop()
        self.stub.stop()
