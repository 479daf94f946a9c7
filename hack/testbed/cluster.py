"""The local cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and KWOK
as background processes on 127.0.0.1, with fake nodes in three datacenters.

`up()` is idempotent: a healthy cluster is reused, a stale one (left by a killed run) is
cleaned away first. `down()` stops every process `up()` started and removes the state.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed import images, nodes, pki
from testbed.paths import state_dir
from testbed.processes import (
    Managed,
    StartError,
    State,
    claim_port,
    free_port,
    is_running,
    log_tail,
    spawn,
    stop,
    wait_until,
)
from testbed.progress import Progress, say
from testbed.tools import GATEWAY_API_MODULE, TOOLS, build_all, is_built, module_source, tool_dir

REGIONS = ("dc-a", "dc-b", "dc-c")
REGION_LABEL = "topology.kubernetes.io/region"
# Components in start order; `down()` stops them in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
KWOK_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
    "pod/chaos/pod-container-running-failed.yaml",
    "volume/fast/pvc-provision.yaml",
    "volume/fast/pv-bind.yaml",
    "volume/fast/pvc-delete.yaml",
    "volume/fast/pv-delete.yaml",
)
# The label that sends a pod through KWOK's failure stage (it ends Failed).
FAIL_POD_LABEL = "pod-container-running-failed.stage.kwok.x-k8s.io"
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
# Writes only: tests prove that an idle operator writes nothing.
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
"""


@dataclass(frozen=True)
class Cluster:
    """What a client needs to reach the running cluster."""

    kubeconfig: Path
    server: str
    state: Path
    binaries: dict[str, Path]

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self._run("kubectl", args, input, check)

    def read(self, path: str, *, missing_ok: bool = False) -> Any:
        """GET an API path as JSON with the admin's certificate. The test bed's polling loops
        (pod runner, gateway, missions) read through this: a kubectl process per read costs
        some 0.1 s of CPU, which on two cores starved the processes under test. A 429 (a new
        resource's storage still initializing, or API priority and fairness) is waited out
        for a few seconds, as client-go does."""
        status, body = self._api.get(path)
        for _ in range(10):
            if status != 429:
                break
            time.sleep(0.5)
            status, body = self._api.get(path)
        if status == 404 and missing_ok:
            return None
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:300].decode(errors='replace')}")
        return json.loads(body)

    @functools.cached_property
    def _api(self) -> _Api:
        return _Api(self.server, self.state / "pki")

    def helm(self, *args: str, input: str | None = None, check: bool = True) -> str:
        """helm (built from the pinned module) against this cluster."""
        return self._run("helm", args, input, check)

    def _run(self, binary: str, args: tuple[str, ...], input: str | None, check: bool) -> str:
        done = subprocess.run(
            [str(self.binaries[binary]), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{binary} {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout if check else done.stdout + done.stderr

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path) -> Path:
        """A kubeconfig that acts as a ServiceAccount (a bound token from the TokenRequest API),
        to test what that account may and may not do."""
        token = self.kubectl("create", "token", name, "-n", namespace, "--duration=2h").strip()
        config = self.kubeconfig.read_text()
        head, _, _ = config.partition("users:")
        path.write_text(
            f"{head}users:\n- name: {name}\n  user:\n    token: {token}\n"
            "contexts:\n- name: imageserver-sre\n  context:\n    cluster: imageserver-sre\n"
            f"    user: {name}\n    namespace: {namespace}\ncurrent-context: imageserver-sre\n"
        )
        path.chmod(0o600)
        return path


def _nodes_per_region() -> int:
    return int(os.environ.get("IMAGESERVER_SRE_NODES_PER_REGION", "3"))


def node_manifests(per_region: int) -> dict[str, Any]:
    """Fake nodes managed by KWOK, labelled with their datacenter (region)."""
    items = []
    for r, region in enumerate(REGIONS):
        for i in range(per_region):
            name = f"kwok-{region}-{i}"
            capacity = {"cpu": "32", "memory": "256Gi", "pods": "250"}
            items.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                        "labels": {
                            "type": "kwok",
                            "kubernetes.io/hostname": name,
                            "kubernetes.io/os": "linux",
                            "kubernetes.io/arch": "amd64",
                            REGION_LABEL: region,
                            "topology.kubernetes.io/zone": f"{region}-{i % 2 + 1}",
                        },
                    },
                    "spec": {"podCIDR": f"10.{r + 1}.{i}.0/24"},
                    "status": {"allocatable": capacity, "capacity": capacity},
                }
            )
    return {"apiVersion": "v1", "kind": "List", "items": items}


def _kwok_config(stage_dir: Path) -> str:
    """The Stages KWOK plays; since v0.8 it has no built-in ones."""
    docs = [(stage_dir / stage).read_text() for stage in KWOK_STAGES]
    return "\n---\n".join(doc.strip() for doc in docs) + "\n"


class _Api:
    """Just enough of the API for readiness checks, with the admin's client certificate."""

    def __init__(self, server: str, pki_dir: Path) -> None:
        self.server = server
        self.context = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
        self.context.load_cert_chain(str(pki_dir / "admin.crt"), str(pki_dir / "admin.key"))

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.server + path, context=self.context, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def ok(self, path: str) -> bool:
        return self.get(path)[0] == 200

    def json(self, path: str) -> Any:
        status, body = self.get(path)
        return json.loads(body) if status == 200 else None


def _http_ok(url: str, *, insecure: bool = False) -> bool:
    context = ssl._create_unverified_context() if insecure else None
    try:
        with urllib.request.urlopen(url, context=context, timeout=3) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError:
        return False


def _healthy(state: State) -> bool:
    if not set(COMPONENTS) <= set(state.processes):
        return False
    if nodes.managed(state) and not nodes.is_up(state):
        return False
    if not all(is_running(proc) for proc in state.processes.values()):
        return False
    try:
        api = _Api(f"https://127.0.0.1:{state.ports['kube-apiserver']}", state.directory / "pki")
        return api.ok("/readyz")
    except (OSError, KeyError, ssl.SSLError):
        return False


def _cluster(state: State, binaries: dict[str, Path]) -> Cluster:
    return Cluster(
        kubeconfig=state.directory / "kubeconfig",
        server=f"https://127.0.0.1:{state.ports['kube-apiserver']}",
        state=state.directory,
        binaries=binaries,
    )


def down(directory: Path | None = None, *, quiet: bool = False) -> None:
    """Stop every process of the cluster and remove its state."""
    directory = directory or state_dir()
    state = State.load(directory)
    if nodes.present(state, directory):
        nodes.down(state, directory)
    if state is not None:
        for name in reversed(COMPONENTS):
            if name in state.processes:
                stop(state.processes[name])
    if directory.exists():
        shutil.rmtree(directory)
        if not quiet:
            say(f"cluster stopped and {directory.name}/ removed")
    elif not quiet:
        say("no cluster to stop")


def _command(managed: Managed) -> tuple[list[str], dict[str, str]]:
    """A running process's arguments and environment, to start it again the same way."""
    argv = [a.decode() for a in Path(f"/proc/{managed.pid}/cmdline").read_bytes().split(b"\0") if a]
    environ = Path(f"/proc/{managed.pid}/environ").read_bytes().split(b"\0")
    return argv, dict(e.decode().split("=", 1) for e in environ if b"=" in e)


# Clients of the API server that these tests do not examine: the controllers and KWOK's
# simulated kubelets. After a server restart they are started again (as a supervisor would
# start a crashed one), so what a restart test proves is the operator's recovery alone.
SUPPORTING = ("kube-controller-manager", "kube-scheduler", "kwok")


def restart(cluster: Cluster, component: str, *, down_for: float = 2.0) -> None:
    """Stop one control-plane process and start it again with the same arguments and
    environment, as a crash or an upgrade would, then wait until the API server is ready.
    The operators must find their way back by themselves; the supporting clients are
    started again once the server is back (see SUPPORTING)."""
    state = State.load(cluster.state)
    assert state is not None, "no cluster state"
    commands = {name: _command(state.processes[name]) for name in (component, *SUPPORTING)}
    stop(state.processes[component])
    time.sleep(down_for)
    restarted = spawn(state, component, *commands[component])
    api = _Api(cluster.server, cluster.state / "pki")

    def ready() -> bool:
        try:
            return api.ok("/readyz")
        except (OSError, ssl.SSLError):
            return False

    wait_until(f"{component} restarted and the API server ready", ready, restarted, 60)
    for name in SUPPORTING:
        stop(state.processes[name])
        again = spawn(state, name, *commands[name])
        time.sleep(0.5)
        if not is_running(again):
            raise StartError(f"{name} did not start again after the {component} restart:\n{log_tail(again)}")

    def nodes_ready() -> bool:
        try:
            nodes = api.json("/api/v1/nodes")["items"]
        except (OSError, ssl.SSLError, ValueError, KeyError, TypeError):
            return False
        conditions = [n.get("status", {}).get("conditions", []) for n in nodes]
        return bool(nodes) and all(
            any(c["type"] == "Ready" and c["status"] == "True" for c in mine) for mine in conditions
        )

    wait_until("the simulated nodes Ready again", nodes_ready, None, 60)


def up(directory: Path | None = None, *, real_nodes: bool = False) -> Cluster:
    """Bring the cluster up, or reuse the healthy one already running; with `real_nodes`,
    with a real node per datacenter too (added to a running cluster that has none)."""
    directory = directory or state_dir()
    binaries = build_all(nodes=real_nodes)
    state = State.load(directory)
    if state is not None and _healthy(state):
        say(f"cluster already running (kubeconfig: {directory.name}/kubeconfig)")
        running = _cluster(state, binaries)
        if real_nodes and not nodes.managed(state):
            add_real_nodes(running)
        return running
    if state is not None or directory.exists():
        alive = [n for n, p in (state.processes.items() if state else []) if is_running(p)]
        say(
            "found a stale cluster from an earlier run"
            + (f" (still running: {', '.join(alive)})" if alive else " (no process left)")
            + "; cleaning it up"
        )
        down(directory, quiet=True)
    try:
        started = _start(directory, binaries)
        if real_nodes:
            add_real_nodes(started)
        return started
    except BaseException:
        # Leave nothing running; the state and logs stay for a look and are cleaned next time.
        state = State.load(directory)
        for proc in state.processes.values() if state else []:
            stop(proc)
        raise


def _start(directory: Path, binaries: dict[str, Path]) -> Cluster:
    progress = Progress("cluster-up", every=0)
    directory.mkdir(parents=True)
    state = State(directory)
    state.ports = {
        "etcd": free_port(),
        "etcd-peer": free_port(),
        "kube-apiserver": claim_port("IMAGESERVER_SRE_APISERVER_PORT"),
        "kube-controller-manager": free_port(),
        "kube-scheduler": free_port(),
        "kwok": free_port(),
    }
    state.save()
    pki_dir = directory / "pki"
    pki.make_pki(pki_dir)
    server = f"https://127.0.0.1:{state.ports['kube-apiserver']}"
    kubeconfig = directory / "kubeconfig"
    kubeconfig.write_text(pki.admin_kubeconfig(pki_dir, server))
    kubeconfig.chmod(0o600)
    (directory / "audit-policy.yaml").write_text(AUDIT_POLICY)
    kwok_stages = module_source("kwok", "sigs.k8s.io/kwok") / "kustomize" / "stage"
    (directory / "kwok.yaml").write_text(_kwok_config(kwok_stages))
    progress.update("certificates and configuration written", force=True)

    etcd_url = f"http://127.0.0.1:{state.ports['etcd']}"
    peer_url = f"http://127.0.0.1:{state.ports['etcd-peer']}"
    etcd = spawn(
        state,
        "etcd",
        [
            str(binaries["etcd"]),
            "--name=testbed",
            f"--data-dir={directory / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=testbed={peer_url}",
            # A throwaway test store: durability is not worth the fsync latency here.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
    )
    wait_until("etcd", lambda: _http_ok(f"{etcd_url}/health"), etcd, 30)
    progress.update("etcd ready", force=True)

    apiserver = spawn(
        state,
        "kube-apiserver",
        [
            str(binaries["kube-apiserver"]),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={state.ports['kube-apiserver']}",
            f"--cert-dir={pki_dir}",
            f"--tls-cert-file={pki_dir / 'apiserver.crt'}",
            f"--tls-private-key-file={pki_dir / 'apiserver.key'}",
            f"--client-ca-file={pki_dir / 'ca.crt'}",
            # Real nodes' kubelets are authorized as nodes, and may touch only their own.
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            # logs, exec and port-forward reach a real node's kubelet at its address.
            f"--kubelet-client-certificate={pki_dir / 'admin.crt'}",
            f"--kubelet-client-key={pki_dir / 'admin.key'}",
            "--kubelet-preferred-address-types=InternalIP",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki_dir / 'sa.pub'}",
            f"--service-account-signing-key-file={pki_dir / 'sa.key'}",
            f"--service-cluster-ip-range={nodes.SERVICE_NETWORK}",
            # No kubelet or kube-proxy could reach a loopback endpoint; nothing in-cluster uses it.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            f"--audit-policy-file={directory / 'audit-policy.yaml'}",
            f"--audit-log-path={directory / 'logs' / 'audit.log'}",
            "--audit-log-maxsize=200",
            "--audit-log-maxbackup=1",
        ],
    )
    api = _Api(server, pki_dir)
    wait_until("kube-apiserver", lambda: api.ok("/readyz"), apiserver, 90)
    progress.update("kube-apiserver ready", force=True)

    cluster = _cluster(state, binaries)
    kcm = spawn(
        state,
        "kube-controller-manager",
        [
            str(binaries["kube-controller-manager"]),
            f"--kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={state.ports['kube-controller-manager']}",
            "--leader-elect=false",
            f"--service-account-private-key-file={pki_dir / 'sa.key'}",
            f"--root-ca-file={pki_dir / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki_dir / 'ca.crt'}",
            f"--cluster-signing-key-file={pki_dir / 'ca.key'}",
            "--use-service-account-credentials=false",
            "--profiling=false",
        ],
    )
    scheduler = spawn(
        state,
        "kube-scheduler",
        [
            str(binaries["kube-scheduler"]),
            f"--kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={state.ports['kube-scheduler']}",
            "--leader-elect=false",
            "--profiling=false",
        ],
    )
    kwok = spawn(
        state,
        "kwok",
        [
            str(binaries["kwok"]),
            f"--kubeconfig={kubeconfig}",
            f"--config={directory / 'kwok.yaml'}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{state.ports['kwok']}",
        ],
    )
    for name, managed in (("kube-controller-manager", kcm), ("kube-scheduler", scheduler)):
        url = f"https://127.0.0.1:{state.ports[name]}/healthz"
        wait_until(name, functools.partial(_http_ok, url, insecure=True), managed, 60)
    progress.update("controller-manager and scheduler ready", force=True)

    per_region = _nodes_per_region()
    cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(node_manifests(per_region)))
    storage_class = (kwok_stages / "volume" / "fast" / "storage-class.yaml").read_text()
    cluster.kubectl("apply", "--server-side", "-f", "-", input=storage_class)
    wait_until(
        f"{per_region * len(REGIONS)} KWOK nodes Ready",
        lambda: _ready_nodes(api) >= per_region * len(REGIONS),
        kwok,
        60,
    )
    wait_until(
        "the default ServiceAccount",
        lambda: api.ok("/api/v1/namespaces/default/serviceaccounts/default"),
        kcm,
        60,
    )
    progress.done(f"{per_region * len(REGIONS)} nodes in {', '.join(REGIONS)} ready")
    return cluster


def add_real_nodes(cluster: Cluster) -> list[str]:
    """A real node per datacenter (kubelet, containerd, runc) in the running cluster, with
    what in-cluster clients need: the `kubernetes` Service's endpoint, reachable from pods."""
    missing = nodes.missing_packages()
    if missing:
        raise StartError(
            "real nodes need Debian packages that are not installed: "
            f"{', '.join(missing)} (`make node-packages` installs them)"
        )
    state = State.load(cluster.state)
    assert state is not None, "no cluster state"
    binaries = {**cluster.binaries, **build_all(nodes=True)}
    progress = Progress("real nodes", every=0)
    if nodes.managed(state):  # already there: bring their images up to date with the sources
        nodes.stop_network_policies(state)  # enforced still by a run killed in the policy test
        nodes.load_images(REGIONS, binaries["ctr"])
        names = sorted(
            f"node-{n.removeprefix('kubelet-')}" for n in nodes.managed(state) if n.startswith("kubelet-")
        )
    else:
        holder = nodes.owner()
        if holder is not None and holder != cluster.state.resolve():
            other = State.load(holder)
            if other is not None and any(is_running(m) for m in nodes.managed(other).values()):
                raise StartError(
                    f"the real nodes belong to the cluster in {holder}: one machine runs one set"
                )
        nodes.down(state, cluster.state)  # whatever a killed run left
        # Node objects of an earlier set would look Ready until their leases ran out.
        cluster.kubectl("delete", "nodes", "-l", f"{nodes.REAL_LABEL}=real", "--ignore-not-found")
        try:
            names = nodes.up(state, REGIONS, binaries, state.ports["kube-apiserver"], binaries["kubectl"])
        except BaseException:
            nodes.down(state, cluster.state)
            raise
    # What in-cluster clients and storage need (applied again: the same objects, no change),
    # with the volumes earlier tests released (Retain: their claims are gone) made anew.
    _recycle_volumes(cluster)
    objects = [_api_endpoints(state.ports["kube-apiserver"]), nodes.volume_manifests(cluster.state, REGIONS)]
    for manifest in objects:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(manifest))
    progress.done(f"{', '.join(names)} ready")
    return names


def load_releases(cluster: Cluster, releases: dict[str, dict[str, str]]) -> None:
    """The imageserver build under each release's tag in the real nodes' containerd: version
    -> the settings its frontends start with (none: the build as it is; see images.release)."""
    binaries = {**cluster.binaries, **build_all(nodes=True)}
    images.build()  # the releases are made from the current build
    made = {f"{images.TARGETS['imageserver']}:{v}": images.release(v, env) for v, env in releases.items()}
    nodes.load_images(REGIONS, binaries["ctr"], made)


def _recycle_volumes(cluster: Cluster) -> None:
    listed = json.loads(cluster.kubectl("get", "pv", "-l", f"{nodes.REAL_LABEL}=real", "-o", "json"))
    for pv in listed["items"]:
        if pv.get("status", {}).get("phase") in ("Released", "Failed"):
            cluster.kubectl("delete", "pv", pv["metadata"]["name"], "--wait=true")
            path = Path(pv["spec"]["local"]["path"])
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True, exist_ok=True)


def _api_endpoints(port: int) -> dict[str, Any]:
    """The `kubernetes` Service's endpoint, where pods reach the API server (the server's
    own reconciler is off: it would publish 127.0.0.1, which no pod can reach)."""
    labels = {"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "testbed"}
    address = nodes.HOST_IP
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": "kubernetes", "namespace": "default", "labels": labels},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
            },
            {
                "apiVersion": "v1",
                "kind": "Endpoints",
                # Mirrored into a second EndpointSlice otherwise, as the server's own is not.
                "metadata": {
                    "name": "kubernetes",
                    "namespace": "default",
                    "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"},
                },
                "subsets": [{"addresses": [{"ip": address}], "ports": [{"name": "https", "port": port}]}],
            },
        ],
    }


def is_ready(obj: dict[str, Any]) -> bool:
    """The object's (node's or pod's) Ready condition is True."""
    conditions = obj.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _ready_nodes(api: _Api) -> int:
    nodes = api.json("/api/v1/nodes") or {"items": []}
    return sum(1 for node in nodes["items"] if is_ready(node))


def running(directory: Path | None = None) -> Cluster | None:
    """The running cluster if there is a healthy one, without building or starting anything."""
    directory = directory or state_dir()
    state = State.load(directory)
    if state is None or not _healthy(state):
        return None
    binaries = {
        binary: tool_dir(tool) / binary for tool in TOOLS if is_built(tool) for binary in tool.binaries
    }
    return _cluster(state, binaries)


def install_gateway_api(cluster: Cluster) -> list[str]:
    """Install the Gateway API standard-channel CRDs from the pinned module; returns their names."""
    crd_dir = module_source("gateway-api", GATEWAY_API_MODULE) / "config" / "crd" / "standard"
    names = []
    for path in sorted(crd_dir.glob("gateway.networking.k8s.io_*.yaml")):
        text = path.read_text()
        if "kind: CustomResourceDefinition" not in text:
            continue  # the channel also ships a ValidatingAdmissionPolicy
        cluster.kubectl("apply", "--server-side", "-f", "-", input=text)
        names.append(path.stem.split("_", 1)[1] + ".gateway.networking.k8s.io")
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names))
    return names


def describe(cluster: Cluster) -> str:
    """A short picture of the cluster for people: versions, nodes per datacenter."""
    version = cluster.kubectl("version", "-o", "json")
    info = json.loads(version)
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json"))["items"]
    lines = [
        f"kubeconfig  {cluster.kubeconfig}",
        f"server      {cluster.server}",
        f"kubectl     {info['clientVersion']['gitVersion']}   "
        f"kube-apiserver {info['serverVersion']['gitVersion']}",
        "",
        f"{'DATACENTER':<12}{'NODES':>6}{'READY':>7}{'PODS CAPACITY':>15}",
    ]
    for region in REGIONS:
        mine = [n for n in nodes if n["metadata"]["labels"].get(REGION_LABEL) == region]
        ready = sum(1 for n in mine if is_ready(n))
        pods = sum(int(n["status"]["capacity"]["pods"]) for n in mine)
        lines.append(f"{region:<12}{len(mine):>6}{ready:>7}{pods:>15}")
    lines += [
        "",
        f"try: {cluster.binaries['kubectl']} --kubeconfig={cluster.kubeconfig} get nodes -L {REGION_LABEL}",
    ]
    return "\n".join(lines)
