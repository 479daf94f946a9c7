"""`make demo`: the whole mission on one machine, told as it happens.

The local cluster with its real nodes, the Helm chart (its operator a container there, with
its own ServiceAccount), a three-datacenter ImageServer whose frontends and storage nodes are
containers of the project's image under real traffic, Prometheus and the Slack API stub. Then
two incidents: a bad release (an image whose frontends fail 30 % of requests), rolled back; a
sick datacenter (its frontends cut off from storage on the network), drained and, once it
recovers, undrained. It writes what a reviewer needs into demo-out/ and exits 0 only when the
story went as told; otherwise it says what diverged. It leaves nothing running.

With `--kwok` the same story runs on simulated nodes: the pod runner plays each pod with an
imageserver process, the operator runs here with the chart's ServiceAccount token, and faults
come through the processes' admin endpoints. CI runs that one (the real nodes' cold build
does not fit its time budget); `tests/e2e/demo/` runs the real one too with `REAL_NODES=1`.

    python -m testbed.demo [--out demo-out] [--short] [--kwok]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testbed import cluster as local_cluster
from testbed.cluster import Cluster, install_gateway_api
from testbed.demo_report import Incident, plot, summary
from testbed.mission import Mission
from testbed.nodes import CHART_ON_REAL_NODES, LOCAL_CLASS, REAL_PLACEMENT
from testbed.paths import REPO_ROOT
from testbed.progress import say

CHART = REPO_ROOT / "charts" / "imageserver-operator"
SPEC: dict[str, Any] = {  # examples/three-datacenters.yaml, scaled to one machine's cores
    "version": "1.0.0",
    "datacenters": [
        {"name": "dc-a", "frontendReplicas": 1},
        {"name": "dc-b", "frontendReplicas": 1},
        {"name": "dc-c", "frontendReplicas": 1},
    ],
    "shards": 2,
    # Two replicas, one to acknowledge: a rollout restarts one at a time and loses nothing.
    "storage": {"replicas": 2, "writeQuorum": 1},
    # The defaults (10m) are for production; a demo cannot wait that long.
    "remediation": {"cooldown": "30s", "drain": {"healthyPeriod": "30s"}},
    # Nor for 5 minutes of clean traffic before an incident ends: a 3-day SLO's burn windows are
    # a tenth of the 30-day table's ("5m" covers 30 s), with the same factors.
    "slo": {"window": "3d"},
    "notifications": {"slack": {"channel": "#imageserver-oncall", "tokenSecretRef": {"name": "slack"}}},
}
BAD_REVISION, BAD_RATIO = "1.1.0", 0.3
# On the real nodes: one node per datacenter holds one replica of a shard (the operator spreads
# a shard's replicas over nodes), on the nodes' local volumes, with requests that fit them.
REAL_SPEC: dict[str, Any] = {
    **SPEC,
    "storage": {"replicas": 1, "writeQuorum": 1, "storageClassName": LOCAL_CLASS, "volumeSize": "1Gi"},
    "resources": {
        "frontend": {"requests": {"cpu": "50m", "memory": "64Mi"}},
        "storage": {"requests": {"cpu": "20m", "memory": "64Mi"}},
    },
    "placement": REAL_PLACEMENT,
}
# The releases as images: 1.0.0 is the build itself, 1.1.0 the build whose frontends fail.
RELEASES = {SPEC["version"]: {}, BAD_REVISION: {"IMAGESERVER_FAULT_ERROR_RATIO": str(BAD_RATIO)}}
LIMIT = 120.0  # seconds from the first errors to the mitigation, at most


class Diverged(Exception):
    """The story did not go as told; the message says where."""


def line(text: str) -> None:
    sys.stderr.write(f"    {text}\n")
    sys.stderr.flush()


class Demo:
    def __init__(
        self, cluster: Cluster, namespace: str, out: Path, workdir: Path, *, short: bool, real: bool
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.out = out
        self.workdir = workdir
        self.short = short
        self.real = real
        self.mission: Mission | None = None
        self.incidents: list[Incident] = []
        self.release = "imageserver-operator"

    # -- the story -------------------------------------------------------------------------

    def play(self) -> None:
        say("[2/6] installing the Helm chart")
        install_gateway_api(self.cluster)
        if self.real:
            self.cluster.kubectl("create", "namespace", self.namespace)  # the chart goes in with the mission
            local_cluster.load_releases(self.cluster, RELEASES)
            line(f"releases {', '.join(RELEASES)} imported into the nodes' containerd ({BAD_REVISION}: bad)")
            mission = Mission(
                self.cluster,
                self.namespace,
                self.workdir,
                REAL_SPEC,
                in_cluster=self.install_on_nodes,
                say=line,
            )
            say("[3/6] a three-datacenter ImageServer under real traffic, on real containers")
        else:
            kubeconfig = self.install_chart()
            say("[3/6] a three-datacenter ImageServer under real traffic")
            mission = Mission(
                self.cluster,
                self.namespace,
                self.workdir,
                SPEC,
                faults={BAD_REVISION: BAD_RATIO},
                fault_roles=("frontend",),  # a bad frontend build: its rollback is clean and quick
                operator_kubeconfig=kubeconfig,
                say=line,
            )
        self.mission = mission
        mission.start()
        self.wait("the operator judges the SLOs healthy", lambda: self.slo_status() == "True", 90)
        self.table()
        say(f"[4/6] incident 1: revision {BAD_REVISION} fails {BAD_RATIO:.0%} of its requests")
        self.bad_rollout()
        self.table()
        say("[5/6] incident 2: every frontend in dc-b fails")
        self.sick_datacenter()
        self.table()

    def helm_install(self, *values: str) -> None:
        """The chart into the demo's namespace, the Slack token Secret named, until Ready."""
        self.cluster.helm(
            "install",
            self.release,
            str(CHART),
            "-n",
            self.namespace,
            "--set=slack.tokenSecrets={slack}",
            "--wait",
            *values,
        )

    def install_on_nodes(self, prometheus: str, slack: str) -> None:
        """The chart as users install it: its operator a container on a real node, talking to
        the API server with its own ServiceAccount, Prometheus and Slack where pods reach them."""
        self.helm_install(
            f"--set=slack.baseUrl={slack}",
            f"--set=prometheus.url={prometheus}",
            "--set=prometheus.intervalSeconds=5",  # the chart's least
            *CHART_ON_REAL_NODES,
            "--timeout=3m",
        )
        selector = f"app.kubernetes.io/instance={self.release}"
        listed = self.cluster.kubectl("get", "pods", "-n", self.namespace, "-l", selector, "-o", "json")
        (pod,) = json.loads(listed)["items"]
        line(
            f"helm install {self.release}: the operator runs in a container on {pod['spec']['nodeName']} "
            f"as ServiceAccount {pod['spec']['serviceAccountName']}"
        )

    def install_chart(self) -> Path:
        self.helm_install("--create-namespace", "--timeout=2m")
        line(f"helm install {self.release}: the operator's Deployment is Ready (on a simulated KWOK node)")
        account = f"{self.release}"
        kubeconfig = self.cluster.service_account_kubeconfig(
            self.namespace, account, self.workdir / "operator.kubeconfig"
        )
        line(f"the operator runs here with ServiceAccount {account}'s token: the chart's RBAC, not admin")
        return kubeconfig

    def bad_rollout(self) -> None:
        mission = self.live()
        incident = Incident("bad rollout", time.time(), action="roll back to 1.0.0")
        self.incidents.append(incident)
        mission.apply(version=BAD_REVISION)
        line(f"kubectl apply: spec.version {BAD_REVISION}")
        incident.errors = self.wait(
            "Prometheus sees the new revision's errors",
            lambda: mission.errors_seen(f'revision="{BAD_REVISION}"'),
            90,
        )
        incident.detected = self.wait("the operator opens an incident", self.incident_open, LIMIT)
        incident.mitigated = self.wait(
            f"the operator aborts the rollout: every datacenter on 1.0.0 (spec.version still {BAD_REVISION})",
            lambda: mission.rolled_back("1.0.0"),
            LIMIT - (incident.detected - incident.errors),
        )
        incident.postmortem = self.postmortem_of_last_action()
        incident.resolved = self.wait("users are fine again: incident resolved", self.incident_closed, 180)
        self.account(incident)

    def sick_datacenter(self) -> None:
        mission = self.live()
        gateway = mission.gateway
        assert gateway is not None
        # Start from a steady state: every datacenter serving (a rollout's tail can make the
        # operator drain one; then it comes back after its 5m window is clean).
        self.wait("every datacenter serves", lambda: min(mission.weights().values()) > 0, 540, every=30)
        recorded = json.loads(mission.annotations().get("imageserver.dev/last-action", "{}"))
        if recorded:  # the operator waits its cooldown between two actions; so does the story
            last = datetime.datetime.fromisoformat(recorded["at"]).timestamp()
            pause = last + 30 - time.time()
            if pause > 0:
                line(f"waiting {pause:.0f}s: the operator's cooldown (30s) separates two actions")
                time.sleep(pause)
        incident = Incident("sick datacenter", time.time(), action="drain dc-b")
        self.incidents.append(incident)
        mission.pods.sicken("dc-b", 1.0)
        if self.real:
            line("game day: dc-b's frontends lose the network to every storage node")
        else:
            line("game day: dc-b's frontends now answer 500 to every request")
        incident.errors = self.wait(
            "Prometheus sees dc-b's errors",
            lambda: mission.errors_seen('datacenter="dc-b"', fresh=self.real),
            90,
        )
        incident.detected = self.wait("the operator opens an incident", self.incident_open, LIMIT)
        incident.mitigated = self.wait(
            "the operator drains dc-b (HTTPRoute weight 0)",
            lambda: mission.weights().get("dc-b") == 0,
            LIMIT - (incident.detected - incident.errors),
        )
        incident.postmortem = self.postmortem_of_last_action()
        lost = gateway.lost(["dc-a", "dc-c"])
        line(f"dc-a and dc-c serve all {len(gateway.uploaded)} images uploaded so far ({len(lost)} missing)")
        if lost:
            raise Diverged(f"images not served after the drain: {', '.join(lost[:5])}")
        incident.resolved = self.wait("users are fine again: incident resolved", self.incident_closed, 180)
        self.account(incident)
        mission.pods.sicken("dc-b", 0.0)
        healed = time.time()
        line("dc-b repaired; only the prober's trickle reaches it while it is drained")
        if self.short:
            line("(--short: not waiting for the undrain, which needs dc-b's 5m window to be clean)")
            return
        self.wait(
            "the operator undrains dc-b (its 5m window, 30 s here, clean; then healthyPeriod 30s)",
            lambda: mission.weights().get("dc-b", 0) > 0,
            540,
            every=30,
        )
        line(f"dc-b serves again, {time.time() - healed:.0f} s after it was repaired")

    # -- observation -----------------------------------------------------------------------

    def live(self) -> Mission:
        assert self.mission is not None
        return self.mission

    def wait(self, what: str, check: Callable[[], bool], timeout: float, every: float = 0.0) -> float:
        """Poll until check(); print the milestone with its time; Diverged when it never comes."""
        started = time.monotonic()
        told = started
        while time.monotonic() - started < timeout:
            if check():
                line(f"✓ {what} (+{time.monotonic() - started:.0f}s)")
                return time.time()
            if every and time.monotonic() - told >= every:
                told = time.monotonic()
                line(f"… {what}: waiting ({told - started:.0f}s)")
            time.sleep(0.5)
        raise Diverged(f"not within {timeout:.0f}s: {what}")

    def incident_open(self) -> bool:
        return "imageserver.dev/incident" in self.live().annotations()

    def incident_closed(self) -> bool:
        return not self.incident_open()

    def postmortem_of_last_action(self) -> str:
        recorded = json.loads(self.live().annotations().get("imageserver.dev/last-action", "{}"))
        return str(recorded.get("incident", ""))

    def slo_status(self) -> str:
        conditions = self.live().imageserver().get("status", {}).get("conditions", [])
        return str(next((c["status"] for c in conditions if c["type"] == "SLOHealthy"), ""))

    def account(self, incident: Incident) -> None:
        gateway = self.live().gateway
        assert gateway is not None and incident.resolved is not None
        incident.failed_requests = gateway.between(incident.started, incident.resolved).failed
        if incident.postmortem:
            body = json.loads(
                self.cluster.kubectl("get", "pm", incident.postmortem, "-n", self.namespace, "-o", "json")
            )
            incident.budget_spent_percent = body["spec"].get("impact", {}).get("errorBudgetConsumedPercent")

    def table(self) -> None:
        """What a user sees: kubectl get imgs, plus where traffic goes."""
        mission = self.live()
        for row in self.cluster.kubectl("get", "imgs", "-n", self.namespace).splitlines():
            line(f"  {row}")
        weights = ", ".join(f"{dc} {w}" for dc, w in sorted(mission.weights().items()))
        gateway = mission.gateway
        ratio = gateway.error_ratio(5) if gateway is not None else 0.0
        line(f"  HTTPRoute weights: {weights}; errors over the last 5 s: {ratio:.1%}")

    # -- what it leaves ----------------------------------------------------------------------

    def write(self) -> list[str]:
        """demo-out/: Slack messages, Postmortems, plot, summary. Returns the divergences found."""
        mission = self.live()
        gateway = mission.gateway
        assert gateway is not None and mission.prometheus is not None
        self.out.mkdir(parents=True, exist_ok=True)
        messages = mission.stub.messages()
        (self.out / "slack-messages.json").write_text(json.dumps(messages, indent=2))
        postmortems = [pm["metadata"]["name"] for pm in mission.postmortems()]
        for name in postmortems:
            exported = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "imageserver_operator.cli",
                    "postmortem",
                    "export",
                    name,
                    "-n",
                    self.namespace,
                ],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)},
            )
            (self.out / f"postmortem-{name}.md").write_text(exported.stdout)
        datacenters = list(mission.datacenters())
        lost = gateway.lost(datacenters)
        table = summary(self.incidents, len(gateway.uploaded), len(lost))
        (self.out / "summary.md").write_text(f"# make demo\n\n{table}\n")
        self.plot(gateway.started_wall)
        say("[6/6] results (also in demo-out/summary.md)")
        for row in table.splitlines():
            line(row)
        line(f"demo-out/: {len(messages)} Slack messages, {len(postmortems)} postmortems, plot.png")

        problems = [f"images lost: {', '.join(lost[:5])}"] if lost else []
        for incident in self.incidents:
            if incident.errors and incident.mitigated and incident.mitigated - incident.errors > LIMIT:
                problems.append(
                    f"{incident.title}: mitigated after {incident.mitigated - incident.errors:.0f}s"
                )
        if len(postmortems) != len(self.incidents):
            problems.append(f"{len(postmortems)} postmortems for {len(self.incidents)} incidents")
        for expected in ("Rolled back 1.0.0", "Drained dc-b"):
            if not any(expected in m.get("text", "") for m in messages):
                problems.append(f"no Slack message says {expected!r}")
        if mission.reasons().count("RolledBack") != 1:
            problems.append("not exactly one rollback")
        return problems

    def keep_evidence(self) -> None:
        """When the story diverged: the operator's logs and what Prometheus said, for people."""
        if self.mission is None:
            return
        evidence = self.out / "evidence"
        evidence.mkdir(parents=True, exist_ok=True)
        for log in self.mission.operators.state.directory.glob("logs/*.log"):
            (evidence / log.name).write_text(log.read_text())
        if self.real:
            logs = self.cluster.kubectl(
                "logs", "-n", self.namespace, f"deployment/{self.release}", "--tail=-1", check=False
            )
            (evidence / "operator.log").write_text(logs)
        if self.mission.prometheus is not None:
            ratios = self.mission.prometheus.query(
                f'{{__name__=~"imageserver:.*", namespace="{self.namespace}"}}'
            )
            (evidence / "prometheus.json").write_text(json.dumps(ratios, indent=1))
        (evidence / "imageserver.json").write_text(json.dumps(self.mission.imageserver(), indent=1))
        line(f"evidence kept in {evidence}")

    def plot(self, origin: float) -> None:
        mission = self.live()
        assert mission.gateway is not None and mission.prometheus is not None
        end = time.time()
        selector = f'namespace="{self.namespace}", route=~"upload|original|variant"'
        by_revision = mission.prometheus.query_range(
            f'sum by (revision) (rate(imageserver_http_requests_total{{{selector}, code=~"5.."}}[15s]))'
            f" / sum by (revision) (rate(imageserver_http_requests_total{{{selector}}}[15s]))",
            origin,
            end,
            2,
        )
        ratio = f'imageserver:availability_error_ratio_by_datacenter:rate5m{{namespace="{self.namespace}"}}'
        burn = mission.prometheus.query_range(
            f"{ratio} / 0.001",  # the default 99.9 % objective's budget
            origin,
            end,
            2,
        )

        def series(result: list[dict[str, Any]], label: str) -> dict[str, list[tuple[float, float]]]:
            return {
                r["metric"].get(label, "?"): [(float(t), float(v)) for t, v in r["values"] if v != "NaN"]
                for r in result
            }

        actions = []
        for event in mission.events():
            if event["reason"] in ("RolledBack", "Drained", "Undrained"):
                stamp = event.get("lastTimestamp") or event.get("eventTime") or ""
                when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
                actions.append((when, event["message"].split(":", 1)[0]))
        plot(
            self.out / "plot.png",
            origin=origin,
            users=mission.gateway.series(),
            revisions=series(by_revision, "revision"),
            burn=series(burn, "datacenter"),
            actions=actions,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="testbed.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "demo-out", help="where the results go")
    parser.add_argument("--short", action="store_true", help="do not wait for the undrain (CI)")
    parser.add_argument(
        "--kwok", action="store_true", help="on simulated nodes, the pod runner playing the pods (CI)"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    say("[1/6] the local cluster" + ("" if args.kwok else ", with a real node per datacenter"))
    running = local_cluster.running()
    cluster = running or local_cluster.up(real_nodes=not args.kwok)
    if running is not None and not args.kwok:
        local_cluster.add_real_nodes(cluster)  # the running cluster's, or added to it
    namespace = f"demo-{uuid.uuid4().hex[:6]}"
    workdir = Path(tempfile.mkdtemp(prefix="imageserver-demo-"))
    demo = Demo(cluster, namespace, args.out, workdir, short=args.short, real=not args.kwok)
    problems: list[str] = []
    try:
        demo.play()
        problems = demo.write()
    except (Diverged, TimeoutError) as error:
        problems = [str(error)]
        demo.keep_evidence()
    finally:
        if demo.mission is not None:
            demo.mission.stop()
        cluster.helm("uninstall", demo.release, "-n", namespace, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)
        if running is None:
            local_cluster.down(cluster.state, quiet=True)
        shutil.rmtree(workdir, ignore_errors=True)  # what matters was copied to demo-out/
    minutes = (time.monotonic() - started) / 60
    if problems:
        say(f"the story diverged ({minutes:.1f} min):")
        for problem in problems:
            line(f"✗ {problem}")
        return 1
    say(f"the story went as told in {minutes:.1f} min; nothing left running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
