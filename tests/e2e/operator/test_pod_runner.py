"""The test bed's pod runner closes the loop: the operator's KWOK pods become real imageserver
processes that serve traffic and are scraped by Prometheus."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import requests
import samples

from testbed.cluster import Cluster
from testbed.operators import OperatorProcesses
from testbed.podrunner import PodRunner
from testbed.prometheus import Prometheus


def test_pods_run_as_real_processes_and_serve_across_datacenters(
    cluster: Cluster,
    namespace: str,
    operators: OperatorProcesses,
    prometheus: Callable[..., Prometheus],
    tmp_path: Path,
) -> None:
    operators.start()
    spec = {
        "version": "1.0.0",
        "shards": 2,
        "datacenters": [{"name": "dc-a", "frontendReplicas": 1}, {"name": "dc-b", "frontendReplicas": 1}],
        "storage": {"replicas": 2, "writeQuorum": 2},
    }
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "imageserver.dev/v1alpha1",
                "kind": "ImageServer",
                "metadata": {"name": "live"},
                "spec": spec,
            }
        ),
    )
    runner = PodRunner(cluster, namespace, tmp_path / "pods").start()
    try:
        frontends = {r.datacenter: r for r in runner.wait_for_frontends(2)}
        assert set(frontends) == {"dc-a", "dc-b"}
        runner.wait_healthy(10)  # 8 storage replicas and 2 frontends: a write needs both replicas of a shard

        def ready(url: str) -> bool:
            try:
                return requests.get(f"{url}/readyz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        deadline = time.monotonic() + 30
        while not all(ready(r.url) for r in frontends.values()) and time.monotonic() < deadline:
            time.sleep(0.25)
        data = samples.jpeg(120, 80, seed=5)
        # As a client would: a 503 with Retry-After while the frontend's shard map catches up is retried.
        deadline = time.monotonic() + 20
        created = requests.post(f"{frontends['dc-a'].url}/v1/images", data=data, timeout=30)
        while created.status_code == 503 and time.monotonic() < deadline:
            time.sleep(float(created.headers.get("Retry-After", "1")))
            created = requests.post(f"{frontends['dc-a'].url}/v1/images", data=data, timeout=30)
        assert created.status_code == 201, created.text
        image_id = created.json()["id"]
        # Read through the other datacenter: its copy arrives asynchronously, or is fetched and repaired.
        answer = requests.get(f"{frontends['dc-b'].url}/v1/images/{image_id}", timeout=30)
        assert answer.status_code == 200 and answer.content == data

        server = prometheus(
            [
                {
                    "job_name": "pods",
                    "file_sd_configs": [{"files": [str(runner.targets)], "refresh_interval": "1s"}],
                }
            ]
        )
        up = server.wait_for(
            f'count(up{{namespace="{namespace}", imageserver="live"}} == 1) == 10', timeout=30
        )
        assert up, "Prometheus did not scrape all 10 processes"
        revisions = server.wait_for('imageserver_build_info{revision="1.0.0", datacenter="dc-b"}')
        assert revisions
    finally:
        runner.stop()


def test_a_pod_replaced_under_the_same_name_between_two_passes_gets_a_new_process(
    cluster: Cluster, namespace: str, operators: OperatorProcesses, tmp_path: Path
) -> None:
    """A StatefulSet's rollout or rollback deletes a pod and creates it again under the same
    name; when both happen between two passes, the old process (the old revision) must not
    go on serving: under CI load it once kept a bad revision's storage alive for minutes."""
    operators.start()
    spec = {
        "version": "1.0.0",
        "datacenters": [{"name": "dc-a"}],
        "storage": {"replicas": 1, "writeQuorum": 1},
    }
    manifest = {"apiVersion": "imageserver.dev/v1alpha1", "kind": "ImageServer", "metadata": {"name": "same"}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest | {"spec": spec}))
    runner = PodRunner(cluster, namespace, tmp_path / "pods")  # driven by hand: no background passes
    pod = "same-storage-dc-a-s0-0"

    def uid() -> str:
        found = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json"))["items"]
        running = [p for p in found if p.get("status", {}).get("phase") == "Running"]
        return next((p["metadata"]["uid"] for p in running if p["metadata"]["name"] == pod), "")

    try:
        deadline = time.monotonic() + 60
        while pod not in runner.runners and time.monotonic() < deadline:
            runner.sync()
            time.sleep(0.5)
        first = runner.runners[pod].managed.pid
        before = uid()
        # Not --wait: kubectl's wait for a deletion can miss it when the StatefulSet recreates
        # the pod under the same name at once; the new uid is what this test waits for.
        cluster.kubectl("delete", "pod", "-n", namespace, pod, "--wait=false")
        deadline = time.monotonic() + 60
        while uid() in ("", before) and time.monotonic() < deadline:
            time.sleep(0.25)  # no pass in between: the runner never sees the pod missing
        assert uid() not in ("", before), "the StatefulSet did not recreate the pod"
        runner.sync()
        assert runner.runners[pod].managed.pid != first
    finally:
        runner.stop()
