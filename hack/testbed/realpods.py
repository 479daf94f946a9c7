"""An ImageServer's pods as the real nodes run them: what the pod runner is to KWOK's pods,
with nothing to run, since kubelets run the containers.

It follows the pods through the API (their addresses, which the host routes to), lists each
in a Prometheus file_sd target file with the labels the rendered ServiceMonitor gives, and
tells the Gateway which frontends take traffic: ready, as their Service's endpoints would
say, and scraped for `SCRAPE_GRACE` (Prometheus sees every request a frontend answers).

A sick datacenter is made on the network, as a game day would: its frontends' connections
to every storage node are refused (iptables in the nodes' namespace, one rule per frontend,
also for frontends started later), so they answer 5xx for every image they must fetch or
store, while their own probes and metrics stay up. Healing removes the rules.
"""

from __future__ import annotations

import shlex
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from testbed.cluster import Cluster
from testbed.nodes import in_netns
from testbed.podrunner import SCRAPE_GRACE, SELECTOR
from testbed.pods import Poller, wait_for_frontends, write_targets

GAME_DAY = "imageserver-sre game day"  # the comment on every rule this module adds


@dataclass(frozen=True)
class Pod:
    pod: str
    role: str
    datacenter: str
    imageserver: str
    address: str
    port: int
    ready: bool
    leaving: bool  # deleted, still running its drain

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"


def observed(pod: dict[str, Any]) -> Pod | None:
    """What the API says of one pod, None while it has no address or process."""
    status = pod.get("status", {})
    if status.get("phase") != "Running" or not status.get("podIP"):
        return None
    meta = pod["metadata"]
    labels = meta.get("labels", {})
    container = pod["spec"]["containers"][0]
    ports = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == "http"]
    return Pod(
        pod=meta["name"],
        role=labels.get("app.kubernetes.io/component", ""),
        datacenter=labels.get("imageserver.dev/datacenter", ""),
        imageserver=labels.get("app.kubernetes.io/instance", ""),
        address=status["podIP"],
        port=ports[0] if ports else 8080,
        ready=any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])),
        leaving=bool(meta.get("deletionTimestamp")),
    )


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(in_netns(["iptables", "-w", *args]), capture_output=True, text=True, check=False)


def cut_rule(namespace: str, frontend: Pod, storage_port: int) -> list[str]:
    """The FORWARD rule refusing one frontend's connections to storage (routed to another
    node or bridged to a storage pod beside it: the bridge hands both to iptables)."""
    return [
        "FORWARD",
        "-s",
        frontend.address,
        "-p",
        "tcp",
        "--dport",
        str(storage_port),
        "-m",
        "comment",
        "--comment",
        f"{GAME_DAY} {namespace} {frontend.datacenter}",
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]


def rules_of(listed: str) -> dict[str, list[list[str]]]:
    """The game-day rules in `iptables -S FORWARD` output, by namespace, as `-D` takes them."""
    found: dict[str, list[list[str]]] = {}
    for line in listed.splitlines():
        if line.startswith("-A FORWARD ") and GAME_DAY in line:
            rule = shlex.split(line)[1:]
            namespace = rule[rule.index("--comment") + 1].removeprefix(GAME_DAY).split()[0]
            found.setdefault(namespace, []).append(rule)
    return found


def heal(keep: Callable[[str], bool] = lambda _namespace: False) -> None:
    """The game-day rules gone, but those of namespaces `keep` names."""
    for namespace, rules in rules_of(_iptables("-S", "FORWARD").stdout).items():
        if not keep(namespace):
            for rule in rules:
                _iptables("-D", *rule)


def filter_bridged_traffic() -> None:
    """A frontend and the storage pod beside it share a bridge, whose traffic iptables sees
    only through br_netfilter: switched on in the nodes' namespace, or a clear refusal."""
    setting = "/proc/sys/net/bridge/bridge-nf-call-iptables"
    subprocess.run(in_netns(["sh", "-c", f"echo 1 > {setting}"]), capture_output=True, check=False)
    said = subprocess.run(in_netns(["cat", setting]), capture_output=True, text=True, check=False)
    if said.stdout.strip() != "1":
        raise RuntimeError(
            "bridged traffic bypasses iptables here, so a frontend would still reach the storage "
            f"pod beside it: {setting} is not 1 ({(said.stdout or said.stderr).strip()}); "
            "`modprobe br_netfilter` loads it"
        )


class RealPods:
    def __init__(self, cluster: Cluster, namespace: str, workdir: Path, interval: float = 1.0) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.targets = workdir / "targets.json"
        self.pods: dict[str, Pod] = {}
        self.sick: set[str] = set()  # datacenters whose frontends cannot reach storage
        self._cut: dict[str, list[list[str]]] = {}  # frontend pod -> its rules
        self._ready_since: dict[str, float] = {}
        self._poller = Poller("real pods", self.sync, interval)
        self._lock = threading.Lock()
        self._rules = threading.Lock()  # the poller and sicken() both enforce, one at a time
        workdir.mkdir(parents=True, exist_ok=True)
        self.targets.write_text("[]")

    # -- following the pods ------------------------------------------------------------------

    def sync(self) -> None:
        listed = self.cluster.read(
            f"/api/v1/namespaces/{self.namespace}/pods?labelSelector={quote(SELECTOR)}"
        )
        now = time.monotonic()
        seen = {p.pod: p for p in (observed(item) for item in listed["items"]) if p is not None}
        with self._lock:
            self.pods = seen
            for name, pod in seen.items():
                if pod.ready and not pod.leaving:
                    self._ready_since.setdefault(name, now)
                else:
                    self._ready_since.pop(name, None)
            for name in set(self._ready_since) - set(seen):
                del self._ready_since[name]
        self._write_targets()
        self._enforce()

    def _write_targets(self) -> None:
        with self._lock:
            targets = [(f"{p.address}:{p.port}", p.imageserver, p.pod) for p in self.pods.values()]
        write_targets(self.targets, self.namespace, targets)

    def start(self) -> RealPods:
        # What a killed run left would cut whichever pod gets its address next.
        live = {n["metadata"]["name"] for n in self.cluster.read("/api/v1/namespaces")["items"]}
        heal(keep=lambda namespace: namespace in live and namespace != self.namespace)
        self.sync()
        self._poller.start()
        return self

    def stop(self) -> None:
        self._poller.stop()
        self.sick.clear()
        self._enforce()
        heal(keep=lambda namespace: namespace != self.namespace)

    # -- what the Gateway and the missions ask -----------------------------------------------

    def frontends(self, datacenter: str | None = None, *, routable: bool = True) -> list[Pod]:
        """Frontends that take traffic (or, with routable=False, every one running). A
        datacenter with none ready sends to those still draining, as gateways do with
        terminating endpoints when no other is left (Kubernetes' ProxyTerminatingEndpoints)."""
        now = time.monotonic()
        with self._lock:
            mine = [
                p
                for p in self.pods.values()
                if p.role == "frontend" and (datacenter is None or p.datacenter == datacenter)
            ]
        if not routable:
            return mine
        ready = [p for p in mine if now - self._ready_since.get(p.pod, now) >= SCRAPE_GRACE]
        served = {p.datacenter for p in ready}
        return ready + [p for p in mine if p.leaving and p.datacenter not in served]

    def count(self) -> int:
        with self._lock:
            return len(self.pods)

    def settled(self, pods: set[str]) -> bool:
        with self._lock:
            return all(name in self.pods and self.pods[name].ready for name in pods) and not any(
                p.leaving for p in self.pods.values()
            )

    def wait_healthy(self, count: int, timeout: float = 60) -> None:
        """Until `count` pods are ready (the kubelets' probes say so)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                ready = sum(p.ready and not p.leaving for p in self.pods.values())
            if ready >= count:
                return
            time.sleep(0.5)
        raise TimeoutError(f"only {ready} of {count} pods ready")

    def wait_for_frontends(self, count: int, timeout: float = 60) -> list[Pod]:
        return wait_for_frontends(self.frontends, count, timeout)

    def sicken(self, datacenter: str, error_ratio: float) -> None:
        """Cut a datacenter's frontends off from storage (1), or mend it (0): a network fault
        fails whole connections, not a share of requests."""
        if error_ratio not in (0.0, 1.0):
            raise ValueError("on real pods a datacenter is sick (1) or not (0), nothing between")
        if error_ratio:
            filter_bridged_traffic()
            self.sick.add(datacenter)
        else:
            self.sick.discard(datacenter)
        self._enforce()

    def _enforce(self) -> None:
        """The rules of each frontend of a sick datacenter (one per storage port), none for the
        others'."""
        with self._rules:  # the pods read inside: an older copy never undoes a newer one
            with self._lock:
                pods = list(self.pods.values())
            self._apply_rules(pods)

    def _apply_rules(self, pods: list[Pod]) -> None:
        ports = sorted({p.port for p in pods if p.role == "storage"}) or [8080]
        wanted = {
            p.pod: [cut_rule(self.namespace, p, port) for port in ports]
            for p in pods
            if p.role == "frontend" and p.datacenter in self.sick
        }
        for name in [n for n, rules in self._cut.items() if wanted.get(n) != rules]:
            for rule in self._cut.pop(name):
                _iptables("-D", *rule)
        for name, rules in wanted.items():
            if name in self._cut:
                continue
            self._cut[name] = []
            for rule in rules:
                done = _iptables("-I", *rule)
                if done.returncode != 0:
                    raise RuntimeError(f"iptables refused the game-day rule: {done.stderr.strip()}")
                self._cut[name].append(rule)  # each as it goes in: a failure leaks none
