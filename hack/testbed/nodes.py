"""Real nodes beside KWOK's: one per datacenter, each a kubelet with its own containerd and
runc, so pods there are containers of the project's own images.

Everything a node makes lives in one network namespace the test bed creates (`isre-nodes`):
the nodes' bridges and pod addresses, kube-proxy's iptables rules, CoreDNS. A veth pair
joins it to the host, where the API server (on 127.0.0.1) is reached through a forwarder
on the host end, and routes lead to the pod networks, so Prometheus and tests on the host
reach pods by their addresses. `down()` kills every container and process, unmounts what
they mounted, and deletes the namespace (its interfaces and rules go with it) and cgroups.

A pod goes to a real node only when it asks to: real nodes carry the `REAL_TAINT` taint
and the `REAL_LABEL` label, so the KWOK nodes keep every other pod (scale tests).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from testbed import images, pki
from testbed.processes import Managed, StartError, State, free_port, is_running, spawn, stop, wait_until

NETNS = "isre-nodes"
HOST_IF, NODE_IF = "isre-host", "isre-nodes"
HOST_IP, NODE_IP = "10.200.0.1", "10.200.0.2"
POD_NETWORK = "10.201.0.0/16"  # node i: 10.201.i.0/24
SERVICE_NETWORK = "10.96.0.0/16"  # the API server's --service-cluster-ip-range
CLUSTER_DNS = NODE_IP  # CoreDNS listens in the nodes' namespace
REAL_LABEL = "imageserver-sre.dev/node"  # = "real"
REAL_TAINT = "imageserver-sre.dev/real-node"
CGROUP_PREFIX = "isre-"
# What an ImageServer's spec.placement says to run on the real nodes.
REAL_PLACEMENT = {
    "nodeSelector": {REAL_LABEL: "real"},
    "tolerations": [{"key": REAL_TAINT, "operator": "Exists"}],
}
# helm's values that put the chart's operator on a real node, from the image built here.
CHART_ON_REAL_NODES = (
    f"--set-string=nodeSelector.{REAL_LABEL.replace('.', chr(92) + '.')}=real",
    f"--set=tolerations[0].key={REAL_TAINT}",
    "--set=tolerations[0].operator=Exists",
    "--set=image.pullPolicy=Never",  # never a registry's
)
CNI_BIN = Path("/usr/lib/cni")
RUNC = Path("/usr/sbin/runc")


@dataclass(frozen=True)
class Node:
    region: str
    index: int

    @property
    def name(self) -> str:
        return f"node-{self.region}"

    @property
    def subnet(self) -> str:
        return f"10.201.{self.index}.0/24"

    @property
    def bridge(self) -> str:
        return f"isre-br{self.index}"

    @property
    def cgroup(self) -> str:
        return f"{CGROUP_PREFIX}{self.region}"

    def socket(self) -> Path:
        return run_dir() / f"{self.region}.sock"


def run_dir() -> Path:
    """containerd's state and sockets: short paths (a unix socket's is limited to 107 bytes)."""
    return Path("/run/imageserver-sre")


def _ip(*args: str, netns: bool = False, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = ["ip", *(["-n", NETNS] if netns else []), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise StartError(f"`{' '.join(command)}` failed: {done.stderr.strip()}")
    return done


def in_netns(argv: list[str]) -> list[str]:
    # nsenter enters the network namespace alone: `ip netns exec` would also remount /sys,
    # hiding the cgroup mounts the kubelet and runc need.
    return ["nsenter", f"--net=/run/netns/{NETNS}", *argv]


def missing_packages() -> list[str]:
    """Debian packages a real node needs that are not installed."""
    wanted = {"runc": RUNC, "containernetworking-plugins": CNI_BIN / "bridge"}
    commands = {
        "iptables": "iptables",
        "conntrack": "conntrack",
        "socat": "socat",
        "buildah": "buildah",
        "ipset": "ipset",  # kube-router's, while a test proves a NetworkPolicy
    }
    missing = [name for name, path in wanted.items() if not path.exists()]
    missing += [name for name, command in commands.items() if shutil.which(command) is None]
    if shutil.which("debootstrap") is None and not Path("/usr/sbin/debootstrap").exists():
        missing.append("debootstrap")
    return missing


def _network(nodes: list[Node]) -> None:
    _ip("netns", "add", NETNS)
    _ip("link", "add", HOST_IF, "type", "veth", "peer", "name", NODE_IF, "netns", NETNS)
    _ip("addr", "add", f"{HOST_IP}/30", "dev", HOST_IF)
    _ip("link", "set", HOST_IF, "up")
    _ip("addr", "add", f"{NODE_IP}/30", "dev", NODE_IF, netns=True)
    _ip("link", "set", NODE_IF, "up", netns=True)
    _ip("link", "set", "lo", "up", netns=True)
    _ip("route", "add", "default", "via", HOST_IP, netns=True)
    _ip("route", "add", POD_NETWORK, "via", NODE_IP)
    # The nodes' namespace routes between its bridges; its own sysctls, not the host's.
    subprocess.run(in_netns(["sysctl", "-qw", "net.ipv4.ip_forward=1"]), check=True)
    # Bridges made up front, so that the namespace is complete before the first pod.
    for node in nodes:
        _ip("link", "add", node.bridge, "type", "bridge", netns=True)
        _ip("addr", "add", f"10.201.{node.index}.1/24", "dev", node.bridge, netns=True)
        _ip("link", "set", node.bridge, "up", netns=True)


def _cni_config(node: Node, directory: Path) -> str:
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "imageserver-sre",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": node.bridge,
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": node.subnet}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(directory / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
                {"type": "loopback"},
            ],
        },
        indent=1,
    )


def _containerd_config(node: Node, directory: Path, root: Path) -> str:
    cri = 'plugins."io.containerd.cri.v1'
    return f"""version = 3
root = "{root}"
state = "{run_dir() / node.region}"
[grpc]
  address = "{node.socket()}"
[ttrpc]
  address = "{run_dir() / node.region}.ttrpc.sock"
[{cri}.images"]
  snapshotter = "overlayfs"
[{cri}.images".pinned_images]
  sandbox = "{images.PAUSE_IMAGE}"
[{cri}.runtime"]
  # The sandbox refuses a lower OOM score than its own (the kubelet asks -998 for a pod's
  # sandbox): keep containers at or above containerd's.
  restrict_oom_score_adj = true
  # Pods' network namespaces under the node's state, not /var/run/netns: down() finds them.
  netns_mounts_under_state_dir = true
[{cri}.runtime".cni]
  bin_dirs = ["{CNI_BIN}"]
  conf_dir = "{directory / "cni"}"
[{cri}.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.runtime".containerd.runtimes.runc.options]
  BinaryName = "{RUNC}"
  SystemdCgroup = false
  Root = "{run_dir() / "runc"}"
"""


def _kubelet_config(node: Node, directory: Path, pki_dir: Path, ports: dict[str, int]) -> str:
    return f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This kernel mounts cgroup v1 (hybrid); Kubernetes 1.35 asks for an explicit opt-in.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{node.cgroup}
containerRuntimeEndpoint: unix://{node.socket()}
address: {NODE_IP}
port: {ports["kubelet"]}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {ports["healthz"]}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {pki_dir / "ca.crt"}}}
authorization: {{mode: Webhook}}
clusterDNS: [{CLUSTER_DNS}]
clusterDomain: cluster.local
resolvConf: {directory / "resolv.conf"}
# Each node's own: a kubelet removes the log folders of pods it does not know.
podLogsDir: {directory / "pod-logs"}
failSwapOn: false
# A shared test machine: never evict for the disk other work fills.
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
rotateCertificates: false
syncFrequency: 5s
fileCheckFrequency: 5s
nodeStatusReportFrequency: 10s
registerWithTaints:
- {{key: {REAL_TAINT}, value: "true", effect: NoSchedule}}
"""


def _kubeconfig(pki_dir: Path, user: str, server: str) -> str:
    return f"""apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: {server}
    certificate-authority: {pki_dir / "ca.crt"}
    tls-server-name: kubernetes
users:
- name: {user}
  user:
    client-certificate: {pki_dir / f"{user}.crt"}
    client-key: {pki_dir / f"{user}.key"}
contexts:
- name: local
  context: {{cluster: local, user: {user}}}
current-context: local
"""


def _cgroups(node: Node) -> list[Path]:
    return [
        Path("/sys/fs/cgroup") / controller.name / node.cgroup
        for controller in Path("/sys/fs/cgroup").iterdir()
        if controller.is_dir() and controller.name != "unified"
    ]


def _make_cgroups(node: Node) -> None:
    """The node's cgroup root in every v1 hierarchy (the kubelet checks it is there)."""
    for path in _cgroups(node):
        path.mkdir(exist_ok=True)
        if path.parent.name == "cpuset":  # a new cpuset has no CPUs until given its parent's
            for name in ("cpuset.cpus", "cpuset.mems"):
                (path / name).write_text((path.parent / name).read_text())


def _corefile() -> str:
    return f""".:53 {{
    bind {CLUSTER_DNS}
    errors
    health 127.0.0.1:{{$HEALTH_PORT}}
    kubernetes cluster.local in-addr.arpa {{
        kubeconfig {{$KUBECONFIG}}
        pods insecure
        fallthrough in-addr.arpa
    }}
    forward . /etc/resolv.conf
    cache 5
}}
"""


def up(
    state: State, regions: tuple[str, ...], binaries: dict[str, Path], apiserver_port: int, kubectl: Path
) -> list[str]:
    """Start a real node per region (the control plane already running); returns their names."""
    nodes = [Node(region, i) for i, region in enumerate(regions)]
    directory = state.directory / "nodes"
    pki_dir = state.directory / "pki"
    images_root = _image_root()
    _network(nodes)
    forwarder = spawn(
        state,
        "apiserver-forwarder",
        [
            shutil.which("socat") or "socat",
            f"TCP-LISTEN:{apiserver_port},bind={HOST_IP},fork,reuseaddr",
            f"TCP:127.0.0.1:{apiserver_port}",
        ],
    )
    server = f"https://{HOST_IP}:{apiserver_port}"
    run_dir().mkdir(parents=True, exist_ok=True)
    (run_dir() / "owner").write_text(str(state.directory.resolve()))
    if not Path("/var/lib/kubelet").exists():
        (run_dir() / "made-var-lib-kubelet").touch()
    for node in nodes:
        mine = directory / node.region
        (mine / "cni").mkdir(parents=True, exist_ok=True)
        (mine / "cni" / "10-bridge.conflist").write_text(_cni_config(node, mine))
        root = images_root / node.region
        root.mkdir(parents=True, exist_ok=True)
        (mine / "containerd.toml").write_text(_containerd_config(node, mine, root))
        # The node authorizer knows a kubelet by this name and group.
        pki.client_credentials(pki_dir, node.name, f"system:node:{node.name}", "system:nodes")
        (mine / "kubeconfig").write_text(_kubeconfig(pki_dir, node.name, server))
        (mine / "resolv.conf").write_text("nameserver 127.0.0.1\n")  # no DNS beyond the cluster
        ports = {"kubelet": free_port(), "healthz": free_port()}
        state.ports.update({f"kubelet-{node.region}": ports["kubelet"]})
        (mine / "kubelet.yaml").write_text(_kubelet_config(node, mine, pki_dir, ports))
        _make_cgroups(node)
        containerd = binaries["containerd"]
        spawn(
            state,
            f"containerd-{node.region}",
            in_netns([str(containerd), f"--config={mine / 'containerd.toml'}"]),
            # The shim is found next to containerd on PATH.
            env={"PATH": f"{containerd.parent}:{os.environ.get('PATH', '')}"},
            binary=str(containerd),
        )
    for node in nodes:
        wait_until(
            f"containerd of {node.name}",
            node.socket().exists,
            state.processes[f"containerd-{node.region}"],
            30,
        )
    load_images(regions, binaries["ctr"])
    for node in nodes:
        mine = directory / node.region
        kubelet = binaries["kubelet"]
        spawn(
            state,
            f"kubelet-{node.region}",
            in_netns(
                [
                    str(kubelet),
                    f"--config={mine / 'kubelet.yaml'}",
                    f"--kubeconfig={mine / 'kubeconfig'}",
                    # Short paths: the kubelet's unix sockets live under its root.
                    f"--root-dir={run_dir() / f'kubelet-{node.region}'}",
                    f"--cert-dir={run_dir() / f'kubelet-{node.region}' / 'pki'}",
                    f"--hostname-override={node.name}",
                    f"--node-ip={NODE_IP}",
                    f"--node-labels=topology.kubernetes.io/region={node.region},{REAL_LABEL}=real",
                    "--v=1",
                ]
            ),
            binary=str(kubelet),
        )
    # The name the default system:node-proxier binding grants kube-proxy's rights to.
    pki.client_credentials(pki_dir, "kube-proxy", "system:kube-proxy")
    (directory / "kube-proxy.kubeconfig").write_text(_kubeconfig(pki_dir, "kube-proxy", server))
    # CoreDNS watches Services, EndpointSlices, Namespaces and Pods; the admin's credentials,
    # at the address the nodes' namespace reaches the API server by.
    (directory / "admin.kubeconfig").write_text(_kubeconfig(pki_dir, "admin", server))
    proxy_ports = (free_port(), free_port())
    spawn(
        state,
        "kube-proxy",
        in_netns(
            [
                str(binaries["kube-proxy"]),
                f"--kubeconfig={directory / 'kube-proxy.kubeconfig'}",
                f"--hostname-override={nodes[0].name}",
                "--proxy-mode=iptables",
                f"--cluster-cidr={POD_NETWORK}",
                f"--healthz-bind-address=127.0.0.1:{proxy_ports[0]}",
                f"--metrics-bind-address=127.0.0.1:{proxy_ports[1]}",
                # The sandbox's conntrack table is the host's: leave its size alone.
                "--conntrack-max-per-core=0",
            ]
        ),
        binary=str(binaries["kube-proxy"]),
    )
    (directory / "Corefile").write_text(_corefile())
    coredns = spawn(
        state,
        "coredns",
        in_netns([str(binaries["coredns"]), f"-conf={directory / 'Corefile'}"]),
        env={"KUBECONFIG": str(directory / "admin.kubeconfig"), "HEALTH_PORT": str(free_port())},
        binary=str(binaries["coredns"]),
    )
    state.save()

    def registered() -> bool:
        out = subprocess.run(
            [
                str(kubectl),
                f"--kubeconfig={state.directory / 'kubeconfig'}",
                "get",
                "nodes",
                "-l",
                f"{REAL_LABEL}=real",
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            return False
        items = json.loads(out.stdout)["items"]
        ready = [
            n
            for n in items
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
        ]
        return len(ready) == len(nodes)

    wait_until("the real nodes Ready", registered, state.processes[f"kubelet-{nodes[-1].region}"], 90)
    for managed in (forwarder, coredns):
        if not is_running(managed):
            raise StartError(f"{managed.binary} stopped; see {managed.log}")
    return [node.name for node in nodes]


def load_images(regions: tuple[str, ...], ctr: Path, extra: dict[str, str] | None = None) -> None:
    """The project's images, built if the sources changed, into every node's containerd
    (with `extra` images made here: name -> id)."""
    nodes = [Node(region, i) for i, region in enumerate(regions)]
    images.load([(node.socket(), _image_root() / node.region) for node in nodes], ctr, extra)


def _image_root() -> Path:
    """containerd's root per node, kept in the cache across clusters: the project's images
    stay unpacked there, so a warm `cluster-up` imports only what changed."""
    from testbed.paths import cache_dir  # noqa: PLC0415

    return cache_dir() / "nodes"


LOCAL_CLASS = "real-local"  # the StorageClass of the real nodes' volumes
VOLUMES_PER_NODE = 8


def volume_manifests(state_directory: Path, regions: tuple[str, ...]) -> dict[str, object]:
    """Local PersistentVolumes on each real node (directories of the node's state), of a
    StorageClass that binds a claim once its pod is scheduled: a storage pod deleted and
    scheduled again finds its volume, on its node, with what it held."""
    items: list[dict[str, object]] = [
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": LOCAL_CLASS},
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "WaitForFirstConsumer",
            "reclaimPolicy": "Retain",
        }
    ]
    for i, region in enumerate(regions):
        node = Node(region, i)
        for v in range(VOLUMES_PER_NODE):
            path = state_directory / "nodes" / region / "volumes" / f"{v}"
            path.mkdir(parents=True, exist_ok=True)
            items.append(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {"name": f"local-{region}-{v}", "labels": {REAL_LABEL: "real"}},
                    "spec": {
                        "capacity": {"storage": "10Gi"},
                        "accessModes": ["ReadWriteOnce"],
                        "persistentVolumeReclaimPolicy": "Retain",
                        "storageClassName": LOCAL_CLASS,
                        "local": {"path": str(path)},
                        "nodeAffinity": {
                            "required": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchExpressions": [
                                            {
                                                "key": "kubernetes.io/hostname",
                                                "operator": "In",
                                                "values": [node.name],
                                            }
                                        ]
                                    }
                                ]
                            }
                        },
                    },
                }
            )
    return {"apiVersion": "v1", "kind": "List", "items": items}


NODE_PROCESSES = ("kube-router", "kubelet", "kube-proxy", "coredns", "containerd", "apiserver-forwarder")
# What kube-router's policy controller adds to the nodes' filter table: its chains (jumped to
# from INPUT, FORWARD and OUTPUT) and ipsets named KUBE-*.
POLICY_CHAINS = ("KUBE-ROUTER-", "KUBE-POD-FW-", "KUBE-NWPLCY-")


@contextlib.contextmanager
def network_policies(state: State, kube_router: Path) -> Iterator[None]:
    """NetworkPolicies enforced on the real nodes while inside: kube-router's policy
    controller, one for all of them (they share one network namespace, and every real pod
    has the same host IP, so one instance covers every node's pods, as kube-proxy does).
    Only while inside: the test bed reaches pods from the host, which the policies (rightly)
    do not name. Afterwards its rules and sets are gone."""
    directory = state.directory / "nodes"
    node = next(n for n in managed(state) if n.startswith("kubelet-")).removeprefix("kubelet-")
    stop_network_policies(state)  # one left by a killed run: never two engines
    process = spawn(
        state,
        "kube-router",
        in_netns(
            [
                str(kube_router),
                f"--kubeconfig={directory / 'admin.kubeconfig'}",
                "--run-firewall=true",
                "--run-router=false",
                "--run-service-proxy=false",
                f"--hostname-override=node-{node}",
                f"--service-cluster-ip-range={SERVICE_NETWORK}",
                "--health-port=0",  # no listeners: nothing here reads them
                "--metrics-port=0",
            ]
        ),
        binary=str(kube_router),
    )
    try:
        wait_until(
            "kube-router's policy chains",
            lambda: "-j KUBE-ROUTER-FORWARD" in _iptables_rules(),
            process,
            30,
        )
        yield
    finally:
        stop_network_policies(state)


def stop_network_policies(state: State) -> None:
    """No policy enforced any more: kube-router stopped, its rules and sets removed."""
    process = state.processes.pop("kube-router", None)
    if process is not None:
        stop(process, grace=5)
        state.save()
    if (Path("/run/netns") / NETNS).exists():
        _remove_policy_rules()


def _iptables_rules() -> str:
    done = subprocess.run(in_netns(["iptables", "-S"]), capture_output=True, text=True, check=False)
    return done.stdout


def _remove_policy_rules() -> None:
    """kube-router leaves its rules when it stops (its own cleanup does nothing in v2.1.0):
    the jumps to its chains first, then the chains, then its ipsets."""
    rules = _iptables_rules().splitlines()
    for rule in rules:
        if rule.startswith("-A ") and any(f"-j {prefix}" in rule for prefix in POLICY_CHAINS):
            subprocess.run(in_netns(["iptables", "-D", *shlex.split(rule)[1:]]), check=False)
    chains = [
        rule.split()[1]
        for rule in rules
        if rule.startswith("-N ") and rule.split()[1].startswith(POLICY_CHAINS)
    ]
    for verb in ("-F", "-X"):
        for chain in chains:
            subprocess.run(in_netns(["iptables", verb, chain]), check=False, capture_output=True)
    sets = subprocess.run(in_netns(["ipset", "list", "-n"]), capture_output=True, text=True, check=False)
    for name in sets.stdout.split():
        if name.startswith("KUBE-"):
            subprocess.run(in_netns(["ipset", "destroy", name]), check=False, capture_output=True)


def down(state: State | None, directory: Path) -> None:
    """Remove every trace of the real nodes, also of a run killed half-way: processes,
    containers, mounts, the network namespace with its interfaces and rules, cgroups."""
    made_kubelet_dir = (run_dir() / "made-var-lib-kubelet").exists()
    if state is not None:
        for prefix in NODE_PROCESSES:  # kubelets first: they would start containers again
            for name, process in list(state.processes.items()):
                if name.startswith(prefix):
                    stop(process, grace=5)
    _kill_containers()
    _unmount_under(run_dir())
    _unmount_under(directory / "nodes")
    _unmount_under(_image_root())
    if (Path("/run/netns") / NETNS).exists():
        _ip("netns", "delete", NETNS, check=False)
    _ip("link", "delete", HOST_IF, check=False)  # gone with its peer; a half-made pair stays
    _ip("route", "delete", POD_NETWORK, check=False)
    _remove_cgroups()
    if made_kubelet_dir:  # the device-plugin socket's folder is fixed: /var/lib/kubelet
        shutil.rmtree("/var/lib/kubelet", ignore_errors=True)
    shutil.rmtree(run_dir(), ignore_errors=True)
    if state is not None and managed(state):
        for name in managed(state):
            del state.processes[name]
        state.save()


def _kill_containers() -> None:
    """Shims and containers outlive containerd: kill what lives in the nodes' cgroups, and
    the shims of the nodes' containerds (found by their address)."""
    for _ in range(3):
        pids: set[int] = set()
        for pids_root in Path("/sys/fs/cgroup/pids").glob(f"{CGROUP_PREFIX}*"):
            for procs in pids_root.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids |= {int(p) for p in procs.read_text().split()}
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    argv = (proc / "cmdline").read_bytes().split(b"\0")
                    ours = any(a.startswith(str(run_dir()).encode() + b"/") for a in argv)
                    if argv[0].endswith(b"containerd-shim-runc-v2") and ours:
                        pids.add(int(proc.name))
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, 9)
        time.sleep(0.5)


def _unmount_under(directory: Path) -> None:
    """Every mount point under `directory`, deepest first (pod volumes, rootfs, netns)."""
    prefix = str(directory.resolve()) + "/"
    points = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                points.append(point)
    for point in sorted(set(points), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _remove_cgroups() -> None:
    for controller in Path("/sys/fs/cgroup").iterdir():
        for root in controller.glob(f"{CGROUP_PREFIX}*"):
            for path in sorted(
                (p for p in [root, *root.rglob("*")] if p.is_dir()), key=lambda p: len(p.parts), reverse=True
            ):
                with contextlib.suppress(OSError):
                    path.rmdir()


def owner() -> Path | None:
    """The state directory of the cluster whose real nodes these are (one machine has one
    set: the namespace, addresses and cgroups have fixed names)."""
    try:
        return Path((run_dir() / "owner").read_text().strip())
    except OSError:
        return None


def present(state: State | None, directory: Path) -> bool:
    """Real nodes of this cluster's to remove: its node processes, or leftovers (namespace,
    state, cgroups) that are its own or no live cluster's."""
    holder = owner()
    return claims(
        directory.resolve(),
        holder,
        holder_has_state=holder is not None and (holder / "state.json").exists(),
        processes=state is not None and bool(managed(state)),
        leftovers=(
            (Path("/run/netns") / NETNS).exists()
            or run_dir().exists()
            or any(Path("/sys/fs/cgroup/pids").glob(f"{CGROUP_PREFIX}*"))
        ),
    )


def claims(
    directory: Path, holder: Path | None, *, holder_has_state: bool, processes: bool, leftovers: bool
) -> bool:
    """The ownership rule, pure: another cluster that still has its state keeps its nodes and
    their leftovers (its own down() removes them); otherwise this cluster removes its node
    processes, and any leftovers (its own, or a killed run's nobody holds)."""
    if holder is not None and holder != directory and holder_has_state:
        return False
    return processes or leftovers


def is_up(state: State) -> bool:
    names = [n for n in state.processes if n.startswith(NODE_PROCESSES)]
    return bool(names) and all(is_running(state.processes[n]) for n in names)


def managed(state: State) -> dict[str, Managed]:
    return {n: m for n, m in state.processes.items() if n.startswith(NODE_PROCESSES)}
