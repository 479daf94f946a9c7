"""Closes the loop on KWOK: for every Running pod of an ImageServer, the real `imageserver`
process runs on 127.0.0.1 with the pod's role, arguments and environment (datacenter,
revision, fault settings), and stops when the pod goes.

Storage pods are reached by their stable DNS names in the topology ConfigMap; the runner
gives each process that reads it (frontends, and storage nodes for the copies they owe) a
copy of that topology with those names mapped to the local ports, and rewrites it when the
ConfigMap or the set of storage processes changes (the process picks the new file up by
itself). Every process is listed in a Prometheus file_sd target file,
labelled with its namespace and ImageServer, so the operator's SLO rules see real traffic.

As on a cluster, Prometheus sees every request a frontend answers: a frontend gets traffic
(`frontends()`) only once it is ready and has been a scrape target for `SCRAPE_GRACE`, and a
frontend whose pod is gone gets none and stays a target that long before it is stopped (the
drain delay a pod's termination grace gives it, with Prometheus still scraping it).

Faults play the incidents: a bad build (every process of a revision fails a share of its
requests, set at start) or a sick datacenter (its frontends fail, switched on and off at run
time through the processes' admin endpoints, which only the runner's token opens).
"""

from __future__ import annotations

import base64
import json
import secrets
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from testbed.cluster import Cluster
from testbed.pods import Poller, wait_for_frontends, write_targets
from testbed.processes import Managed, State, free_port, is_running, spawn, stop

SELECTOR = "app.kubernetes.io/name=imageserver"
SCRAPE_GRACE = 2.0  # seconds: two of the test bed's 1 s scrapes
READY_WAIT = 15.0  # seconds an old frontend serves, at most, while its replacement gets ready


@dataclass
class Runner:
    pod: str
    role: str
    datacenter: str
    port: int
    managed: Managed
    imageserver: str
    topology: Path | None = None
    uid: str = ""  # a StatefulSet's pod comes back under the same name: the uid tells it apart
    routable_at: float | None = None  # monotonic: ready, and scraped by then
    address: str = ""  # a storage pod's, as the topology names it

    @property
    def workload(self) -> str:
        """The StatefulSet (or ReplicaSet) it belongs to: the pod's name without its ordinal."""
        return self.pod.rsplit("-", 1)[0]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _env(container: dict[str, Any], secret: Callable[[str, str], str]) -> dict[str, str]:
    """The container's environment, with Secret references resolved as the kubelet does."""
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif ref := item.get("valueFrom", {}).get("secretKeyRef"):
            env[item["name"]] = secret(ref["name"], ref["key"])
    return env


def storage_address(pod: dict[str, Any]) -> str:
    """The URL the topology uses for this storage pod (StatefulSet pod DNS)."""
    spec, meta = pod["spec"], pod["metadata"]
    host = spec.get("hostname", meta["name"])
    return f"http://{host}.{spec.get('subdomain', '')}.{meta['namespace']}.svc:8080"


def local_topology(document: dict[str, Any], addresses: dict[str, str]) -> dict[str, Any]:
    """The topology with storage pod names replaced by local URLs (unknown ones by a dead port)."""
    copy = json.loads(json.dumps(document))
    for dc in copy.get("datacenters", []):
        for shard in dc.get("shards", []):
            shard["replicas"] = [addresses.get(url, "http://127.0.0.1:9") for url in shard["replicas"]]
    return dict(copy)


def retirements(
    retiring: dict[str, tuple[str, float]], running: set[str], ready: set[str], now: float
) -> list[str]:
    """Which replaced storage pods' processes (pod name -> its StatefulSet, replaced since,
    monotonic) to stop now, given the pods Running and those whose process answers /readyz.

    One is stopped once every other pod of its StatefulSet is served: by a ready process,
    or by its old one, still running (at most READY_WAIT). KWOK reports a pod Ready as soon
    as it runs, so the StatefulSet controller replaces the next pod before the last one's
    process listens; the kubelet's readiness probe would hold it back, so that one replica
    at a time is down, as on a cluster. Pods already recreated go first: the controller
    replaced the next one only after them, so a pass that sees two replaced stops the
    earlier one alone (its replacement is not ready yet when the second is judged)."""
    left = dict(retiring)
    stopped: list[str] = []
    for name, (workload, since) in sorted(retiring.items(), key=lambda i: (i[0] not in running, i[1][1])):
        members = {pod for pod in running | set(left) if pod.rsplit("-", 1)[0] == workload}
        served = all(pod in left or pod in ready for pod in members - {name})
        if served or now - since >= READY_WAIT:
            stopped.append(name)
            del left[name]
    return stopped


class PodRunner:
    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        workdir: Path,
        *,
        interval: float = 0.5,
        faults: dict[str, float] | None = None,
        fault_roles: tuple[str, ...] = ("frontend", "storage"),
    ) -> None:
        self.cluster = cluster
        # A bad build, simulated: processes of these revisions (and roles) fail this share.
        self.faults = faults or {}
        self.fault_roles = fault_roles
        self.datacenter_faults: dict[str, float] = {}  # a sick datacenter: its frontends fail
        self.admin_token = secrets.token_hex(16)
        self.namespace = namespace
        self.workdir = workdir
        self.interval = interval
        self.state = State(workdir / "processes")
        self.runners: dict[str, Runner] = {}
        self.leaving: list[tuple[Runner, float]] = []  # pods gone: stopped at the monotonic time
        # Storage pods gone (replaced): their process, and since when (monotonic). See _retire.
        self.retiring: dict[str, tuple[Runner, float]] = {}
        # A StatefulSet's pod keeps its DNS name when replaced: its process keeps its port.
        self.storage_ports: dict[str, int] = {}
        self.targets = workdir / "targets.json"
        self._poller = Poller("pod runner", self.sync, interval)
        self._lock = threading.Lock()
        workdir.mkdir(parents=True, exist_ok=True)
        self.targets.write_text("[]")

    def frontends(self, datacenter: str | None = None, *, routable: bool = True) -> list[Runner]:
        """Frontends that take traffic (or, with routable=False, every one running). As a
        rollout gated on readiness would, a datacenter whose new frontends are not ready yet
        keeps sending to its old ones (KWOK makes pods ready at once)."""
        now = time.monotonic()
        with self._lock:
            running = [
                r
                for r in self.runners.values()
                if r.role == "frontend"
                and (datacenter is None or r.datacenter == datacenter)
                and is_running(r.managed)
            ]
            if not routable:
                return running
            ready = [r for r in running if r.routable_at is not None and r.routable_at <= now]
            served = {r.datacenter for r in ready}
            old = [
                r
                for r, _ in self.leaving
                if (datacenter is None or r.datacenter == datacenter)
                and r.datacenter not in served
                and is_running(r.managed)
            ]
            return ready + old

    def count(self) -> int:
        with self._lock:
            return len(self.runners)

    def settled(self, pods: set[str]) -> bool:
        """Each of these pods has its process, and no replaced process is on its way out."""
        with self._lock:  # read apart from the runner's thread, which changes these
            return pods <= set(self.runners) and not self.leaving and not self.retiring

    def _serves(self, datacenter: str) -> bool:
        now = time.monotonic()
        return any(
            r.role == "frontend"
            and r.datacenter == datacenter
            and r.routable_at is not None
            and r.routable_at <= now
            for r in self.runners.values()
        )

    def sync(self) -> None:
        """One pass: start what is Running, stop what is gone, refresh topologies and targets."""
        pods = self.cluster.read(f"/api/v1/namespaces/{self.namespace}/pods?labelSelector={quote(SELECTOR)}")
        running = {
            p["metadata"]["name"]: p
            for p in pods["items"]
            if p.get("status", {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        }
        with self._lock:
            # Gone, or replaced under the same name (a StatefulSet's rollout or rollback can
            # delete and recreate a pod between two passes): its process goes too.
            replaced = [
                n
                for n, r in self.runners.items()
                if n not in running or r.uid != running[n]["metadata"]["uid"]
            ]
            for name in replaced:
                gone = self.runners.pop(name)
                if gone.role == "frontend":  # no traffic from now, scraped a little longer
                    self.leaving.append((gone, time.monotonic() + SCRAPE_GRACE))
                else:  # stopped by _retire; its replacement then starts on the same data
                    self.retiring[name] = (gone, time.monotonic())
            # Stopped once scraped a last time and its datacenter has a ready frontend again
            # (or, at the latest, READY_WAIT later).
            now = time.monotonic()
            due = [
                r
                for r, at in self.leaving
                if at <= now and (self._serves(r.datacenter) or at + READY_WAIT <= now)
            ]
            self.leaving = [(r, at) for r, at in self.leaving if r not in due]
        self._retire(running)
        with self._lock:
            for pod in sorted(
                running.values(), key=lambda p: p["spec"]["containers"][0]["args"][0] != "storage"
            ):
                name = pod["metadata"]["name"]
                if name not in self.runners and name not in self.retiring:
                    self._start(pod)
            addresses = {
                r.address: r.url
                for r in [*self.runners.values(), *(old for old, _ in self.retiring.values())]
                if r.role == "storage"
            }
        for runner in due:
            stop(runner.managed, grace=5)
        self._write_topologies(addresses)
        self._write_targets()
        self._admit()

    def _retire(self, running: dict[str, dict[str, Any]]) -> None:
        """Stops the replaced storage processes that `retirements` lets go (see there)."""
        with self._lock:
            retiring = {name: (old.workload, since) for name, (old, since) in self.retiring.items()}
            current = dict(self.runners)
        ready = {name for name in running if name in current and self._ready(current[name])}
        for name in retirements(retiring, set(running), ready, time.monotonic()):
            with self._lock:
                old, _ = self.retiring.pop(name)
            stop(old.managed, grace=5)

    @staticmethod
    def _ready(runner: Runner) -> bool:
        try:
            with urllib.request.urlopen(f"{runner.url}/readyz", timeout=0.5) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def _admit(self) -> None:
        """Frontends that answer /readyz take traffic once Prometheus has had time to scrape them."""
        with self._lock:
            waiting = [r for r in self.runners.values() if r.role == "frontend" and r.routable_at is None]
        for runner in waiting:
            if self._ready(runner):
                runner.routable_at = time.monotonic() + SCRAPE_GRACE

    def _start(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        container = pod["spec"]["containers"][0]
        args = list(container["args"])
        role = args[0]
        port = self.storage_ports.setdefault(meta["name"], free_port()) if role == "storage" else free_port()
        env = _env(container, self._secret) | {
            "IMAGESERVER_PORT": str(port),
            "IMAGESERVER_HOST": "127.0.0.1",
            "IMAGESERVER_ENABLE_ADMIN": "true",
            # Stopped once its pod is gone from the API, when nothing routes to it any more.
            "IMAGESERVER_DRAIN_DELAY": "0",
            "IMAGESERVER_ADMIN_TOKEN": self.admin_token,
            "IMAGESERVER_FAULT_SEED": meta["name"],  # as the pod's host name would be
        }
        ratio = self.faults.get(env.get("IMAGESERVER_REVISION", ""), 0.0) if role in self.fault_roles else 0.0
        if role == "frontend":
            ratio = max(ratio, self.datacenter_faults.get(env.get("IMAGESERVER_DATACENTER", ""), 0.0))
        if ratio:
            env["IMAGESERVER_FAULT_ERROR_RATIO"] = str(ratio)
        directory = self.workdir / meta["name"]
        directory.mkdir(parents=True, exist_ok=True)
        topology = None
        if role == "storage":
            args[args.index("--data") + 1] = str(directory / "data")
        if "--topology" in args:  # frontends, and storage nodes for the copies they owe
            topology = directory / "topology.json"
            args[args.index("--topology") + 1] = str(topology)
        argv = [sys.executable, "-m", "imageserver", *args, "--port", str(port), "--host", "127.0.0.1"]
        managed = spawn(self.state, meta["name"], argv, env)
        instance = meta.get("labels", {}).get("app.kubernetes.io/instance", "")
        self.runners[meta["name"]] = Runner(
            meta["name"],
            role,
            env.get("IMAGESERVER_DATACENTER", ""),
            port,
            managed,
            instance,
            topology,
            meta["uid"],
            address=storage_address(pod) if role == "storage" else "",
        )

    def _secret(self, name: str, key: str) -> str:
        encoded = self.cluster.kubectl(
            "get", "secret", name, "-n", self.namespace, "-o", f"jsonpath={{.data.{key}}}", check=False
        )
        return base64.b64decode(encoded).decode() if encoded else ""

    def _write_topologies(self, addresses: dict[str, str]) -> None:
        with self._lock:
            # Frontends on their way out too: they take traffic until their replacements are
            # ready, and a storage process that restarted listens on a new port.
            readers = [
                r
                for r in [*self.runners.values(), *(r for r, _ in self.leaving)]
                if r.topology is not None and is_running(r.managed)
            ]
        documents: dict[str, Any] = {}  # one read per ImageServer and pass, however many readers
        for runner in readers:
            if runner.topology is None:
                continue
            if runner.imageserver not in documents:
                documents[runner.imageserver] = self._topology(runner.imageserver)
            document = documents[runner.imageserver]
            if document is None:
                continue
            text = json.dumps(local_topology(document, addresses), indent=2, sort_keys=True)
            if not runner.topology.exists() or runner.topology.read_text() != text:
                tmp = runner.topology.with_suffix(".tmp")
                tmp.write_text(text)
                tmp.replace(runner.topology)

    def _topology(self, imageserver: str) -> Any:
        """The operator's topology document, or None while there is none (or no API server)."""
        try:
            configmap = self.cluster.read(
                f"/api/v1/namespaces/{self.namespace}/configmaps/{imageserver}-topology", missing_ok=True
            )
            return None if configmap is None else json.loads(configmap["data"]["topology.json"])
        except (RuntimeError, OSError, KeyError, ValueError):
            return None

    def _write_targets(self) -> None:
        with self._lock:
            targets = [
                (f"127.0.0.1:{r.port}", r.imageserver, r.pod)
                for r in [
                    *self.runners.values(),
                    *(r for r, _ in self.leaving),
                    *(r for r, _ in self.retiring.values()),
                ]
            ]
        write_targets(self.targets, self.namespace, targets)

    def start(self) -> PodRunner:
        self._poller.start()
        return self

    def stop(self) -> None:
        self._poller.stop()
        with self._lock:
            for runner in [
                *self.runners.values(),
                *(r for r, _ in self.leaving),
                *(r for r, _ in self.retiring.values()),
            ]:
                stop(runner.managed, grace=5)
            self.runners.clear()
            self.leaving.clear()
            self.retiring.clear()

    def logged(self, containing: str) -> list[str]:
        """Lines of every process's log (those gone included) that contain the text."""
        found = []
        for log in sorted((self.state.directory / "logs").glob("*.log")):
            found += [
                f"{log.stem}: {line}"
                for line in log.read_text(errors="replace").splitlines()
                if containing in line
            ]
        return found

    def sicken(self, datacenter: str, error_ratio: float) -> None:
        """Make a datacenter's frontends fail this share of requests (0 heals it), now and for
        frontends started later."""
        self.datacenter_faults[datacenter] = error_ratio
        for runner in self.frontends(datacenter, routable=False):
            request = urllib.request.Request(
                f"{runner.url}/admin/faults",
                data=json.dumps({"errorRatio": error_ratio}).encode(),
                headers={"Authorization": f"Bearer {self.admin_token}", "Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=5) as answer:
                answer.read()

    def wait_healthy(self, count: int, timeout: float = 60) -> None:
        """Until `count` processes (storage and frontends) answer /healthz."""
        deadline = time.monotonic() + timeout
        healthy = 0
        while time.monotonic() < deadline:
            with self._lock:
                urls = [r.url for r in self.runners.values() if is_running(r.managed)]
            healthy = 0
            for url in urls:
                try:
                    with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
                        healthy += answer.status == 200
                except OSError:
                    pass
            if healthy >= count:
                return
            time.sleep(0.25)
        raise TimeoutError(f"only {healthy} of {count} processes healthy")

    def wait_for_frontends(self, count: int, timeout: float = 60) -> list[Runner]:
        return wait_for_frontends(self.frontends, count, timeout)
