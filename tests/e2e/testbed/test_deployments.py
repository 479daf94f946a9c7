"""Deployments on KWOK nodes behave as on a real cluster: scheduling across datacenters,
readiness, ReplicaSets per pod template, and `kubectl rollout undo`."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from testbed.cluster import REGION_LABEL, REGIONS, Cluster, is_ready


def deployment(name: str, replicas: int, version: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": REGION_LABEL,
                            "whenUnsatisfiable": "DoNotSchedule",
                            "labelSelector": {"matchLabels": labels},
                        }
                    ],
                    "containers": [{"name": "app", "image": f"example.invalid/app:{version}"}],
                },
            },
        },
    }


def pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json")
    return list(json.loads(out)["items"])


def replica_sets(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    """ReplicaSets by the image of their pod template."""
    out = json.loads(cluster.kubectl("get", "replicasets", "-n", namespace, "-o", "json"))
    return {rs["spec"]["template"]["spec"]["containers"][0]["image"]: rs for rs in out["items"]}


def test_six_replicas_spread_over_three_regions_are_ready_within_30s(
    cluster: Cluster, namespace: str
) -> None:
    started = time.monotonic()
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(deployment("web", 6, "v1")))
    ready: list[dict[str, Any]] = []
    while time.monotonic() - started < 30:
        ready = [p for p in pods(cluster, namespace, "app=web") if is_ready(p)]
        if len(ready) == 6:
            break
        time.sleep(0.25)
    elapsed = time.monotonic() - started
    assert len(ready) == 6, f"only {len(ready)} of 6 pods Ready after {elapsed:.1f}s"

    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json"))["items"]
    region_of = {n["metadata"]["name"]: n["metadata"]["labels"][REGION_LABEL] for n in nodes}
    spread = Counter(region_of[p["spec"]["nodeName"]] for p in ready)
    assert spread == dict.fromkeys(REGIONS, 2)


def test_new_template_makes_a_new_replicaset_and_rollout_undo_restores_the_old(
    cluster: Cluster, namespace: str
) -> None:
    def rollout_done() -> None:
        cluster.kubectl("rollout", "status", "-n", namespace, "deployment/web", "--timeout=60s")

    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(deployment("web", 3, "v1")))
    rollout_done()
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(deployment("web", 3, "v2")))
    rollout_done()
    sets = replica_sets(cluster, namespace)
    assert set(sets) == {"example.invalid/app:v1", "example.invalid/app:v2"}
    assert sets["example.invalid/app:v2"]["status"].get("readyReplicas") == 3
    assert sets["example.invalid/app:v1"]["spec"]["replicas"] == 0
    first_uid = sets["example.invalid/app:v1"]["metadata"]["uid"]

    cluster.kubectl("rollout", "undo", "-n", namespace, "deployment/web")
    rollout_done()
    sets = replica_sets(cluster, namespace)
    restored = sets["example.invalid/app:v1"]
    assert restored["metadata"]["uid"] == first_uid, "undo must reuse the previous ReplicaSet"
    assert restored["status"].get("readyReplicas") == 3
    assert sets["example.invalid/app:v2"]["spec"]["replicas"] == 0
    serving = [
        p
        for p in pods(cluster, namespace, "app=web")
        if is_ready(p) and "deletionTimestamp" not in p["metadata"]
    ]
    images = {p["spec"]["containers"][0]["image"] for p in serving}
    assert images == {"example.invalid/app:v1"}
