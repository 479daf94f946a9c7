"""`make bench-operator`: the operator on the local cluster (KWOK), beside its floor.

1. kubectl apply of a 3-datacenter x 4-shard ImageServer → Ready, against the same
   objects applied directly with kubectl (no operator: what the cluster itself needs).
2. 200 ImageServers in one namespace → all Ready.
3. The operator idle with those 200: resident memory, CPU, and API writes per minute
   (from the API server's audit log; its Lease renewals are counted apart).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from imageserver_operator.api.models import ImageServerSpec
from imageserver_operator.core.render import Environment, Owner, render
from testbed import cluster as local_cluster
from testbed.cluster import Cluster
from testbed.operators import OperatorProcesses
from testbed.paths import REPO_ROOT
from testbed.progress import say

WRITES = {"create", "update", "patch", "delete", "deletecollection"}
BIG = {"version": "1.0.0", "shards": 4, "datacenters": [{"name": "dc-a"}, {"name": "dc-b"}, {"name": "dc-c"}]}
SMALL = {
    "version": "1.0.0",
    "datacenters": [{"name": "dc-a", "frontendReplicas": 1}],
    "storage": {"replicas": 1, "writeQuorum": 1},
}


def imageserver(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "imageserver.dev/v1alpha1",
        "kind": "ImageServer",
        "metadata": {"name": name},
        "spec": spec,
    }


def namespace(cluster: Cluster) -> str:
    name = f"bench-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    return name


def ready_count(cluster: Cluster, ns: str) -> int:
    items = json.loads(cluster.kubectl("get", "imgs", "-n", ns, "-o", "json"))["items"]
    return sum(
        1
        for i in items
        if any(
            c["type"] == "Ready" and c["status"] == "True" for c in i.get("status", {}).get("conditions", [])
        )
    )


def wait(check: Any, timeout: float, interval: float = 0.1) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError("not within the time limit")
        time.sleep(interval)
    return time.monotonic() - started


def workloads_ready(cluster: Cluster, ns: str, expected: int) -> bool:
    items = json.loads(cluster.kubectl("get", "deploy,sts", "-n", ns, "-o", "json"))["items"]
    return len(items) == expected and all(
        i.get("status", {}).get("readyReplicas", 0) == i["spec"]["replicas"] for i in items
    )


def direct_apply_seconds(cluster: Cluster) -> float:
    """The floor: the same objects applied by kubectl, no operator, until every workload is ready."""
    ns = namespace(cluster)
    owner = Owner("big", ns, str(uuid.uuid4()))
    objects = render(owner, ImageServerSpec.model_validate(BIG), Environment())
    for obj in objects:
        del obj["metadata"]["ownerReferences"]  # no owner exists here
    workloads = sum(1 for o in objects if o["kind"] in ("Deployment", "StatefulSet"))
    started = time.monotonic()
    cluster.kubectl(
        "apply",
        "--server-side",
        "-n",
        ns,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
    )
    wait(lambda: workloads_ready(cluster, ns, workloads), 120)
    seconds = time.monotonic() - started
    cluster.kubectl("delete", "namespace", ns, "--wait=false")
    return seconds


def operator_apply_seconds(cluster: Cluster, operators_dir: Path) -> float:
    ns = namespace(cluster)
    operators = OperatorProcesses(cluster, ns, operators_dir / ns)
    operators.start(lease_seconds=15)
    try:
        time.sleep(3)  # the operator is up and leads
        started = time.monotonic()
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(imageserver("big", BIG)))
        wait(lambda: ready_count(cluster, ns) == 1, 120)
        return time.monotonic() - started
    finally:
        operators.stop_all()
        cluster.kubectl("delete", "namespace", ns, "--wait=false")


def proc(pid: int) -> tuple[float, float]:
    """(resident MB, CPU seconds so far) of a process."""
    rss = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return rss / 1024, ticks / 100


def audit_writes(cluster: Cluster, ns: str, offset: int) -> tuple[int, int]:
    """(writes by the operator to the namespace, of which Lease renewals) since `offset`."""
    writes = leases = 0
    with open(cluster.state / "logs" / "audit.log") as log:
        log.seek(offset)
        for entry in map(json.loads, log):
            ref = entry.get("objectRef", {})
            if (
                entry.get("verb") in WRITES
                and ref.get("namespace") == ns
                and not entry.get("userAgent", "").startswith("kube-")
            ):
                writes += 1
                leases += ref.get("resource") == "leases"
    return writes, leases


def many(cluster: Cluster, operators_dir: Path, count: int, idle_seconds: int) -> dict[str, float]:
    ns = namespace(cluster)
    operators = OperatorProcesses(cluster, ns, operators_dir / ns)
    managed = operators.start(resync_seconds=60, lease_seconds=15)
    try:
        time.sleep(3)
        items = [imageserver(f"s{i:03d}", SMALL) for i in range(count)]
        started = time.monotonic()
        cluster.kubectl(
            "apply",
            "-n",
            ns,
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
        )
        last = -1
        while (done := ready_count(cluster, ns)) < count:
            if done != last:
                say(f"{done}/{count} ImageServers Ready ({time.monotonic() - started:.0f}s)")
                last = done
            if time.monotonic() - started > 900:
                raise TimeoutError(f"only {done} of {count} Ready after 15 minutes")
            time.sleep(1)
        all_ready = time.monotonic() - started
        say(f"all {count} Ready in {all_ready:.1f}s; measuring {idle_seconds}s idle")
        time.sleep(10)  # let the last status updates land
        offset = (cluster.state / "logs" / "audit.log").stat().st_size
        rss0, cpu0 = proc(managed.pid)
        time.sleep(idle_seconds)
        rss1, cpu1 = proc(managed.pid)
        writes, leases = audit_writes(cluster, ns, offset)
        per_minute = 60 / idle_seconds
        pods = len(json.loads(cluster.kubectl("get", "pods", "-n", ns, "-o", "json"))["items"])
        return {
            "imageservers": count,
            "pods": pods,
            "all_ready_seconds": all_ready,
            "idle_rss_mb": max(rss0, rss1),
            "idle_cpu_percent": 100 * (cpu1 - cpu0) / idle_seconds,
            "writes_per_idle_minute": (writes - leases) * per_minute,
            "lease_renewals_per_minute": leases * per_minute,
        }
    finally:
        operators.stop_all()
        cluster.kubectl("delete", "namespace", ns, "--wait=false")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="repetitions of the apply-to-Ready measurement")
    parser.add_argument("--count", type=int, default=200, help="ImageServers in the scale test")
    parser.add_argument("--idle-seconds", type=int, default=120, help="idle measurement (covers 2 resyncs)")
    args = parser.parse_args()
    cluster = local_cluster.running() or local_cluster.up()
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
    work = Path(tempfile.mkdtemp(prefix="operator-bench-"))
    say(f"apply → Ready, {args.runs} runs each: operator vs kubectl apply of the same objects")
    operator_runs = [operator_apply_seconds(cluster, work) for _ in range(args.runs)]
    direct_runs = [direct_apply_seconds(cluster) for _ in range(args.runs)]
    say(f"{args.count} ImageServers in one namespace")
    scale = many(cluster, work, args.count, args.idle_seconds)
    op, floor = statistics.median(operator_runs), statistics.median(direct_runs)
    table = "\n".join(
        [
            "| measurement | value | peer / floor | ratio |",
            "|---|---:|---:|---|",
            f"| 3 DC x 4 shards: apply → Ready (median of {args.runs}) | "
            f"{op:.2f} s (max {max(operator_runs):.2f}) | "
            f"{floor:.2f} s kubectl apply of the same objects | operator = {op / floor:.2f} x the floor |",
            f"| {scale['imageservers']} ImageServers ({scale['pods']} pods) → all Ready | "
            f"{scale['all_ready_seconds']:.1f} s | | |",
            f"| operator RSS, idle with {scale['imageservers']} | {scale['idle_rss_mb']:.0f} MB | "
            "floor ≤ 250 MB | |",
            f"| operator CPU, idle | {scale['idle_cpu_percent']:.2f} % of a core | | |",
            f"| API writes per idle minute | {scale['writes_per_idle_minute']:.0f} | must be 0 | |",
            f"| Lease renewals per minute (leader election) | {scale['lease_renewals_per_minute']:.0f} | | |",
        ]
    )
    out = REPO_ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "operator.md").write_text(table + "\n")
    print(table)
    return 0 if scale["writes_per_idle_minute"] == 0 and op <= 10 else 1


if __name__ == "__main__":
    sys.exit(main())
