"""The capacity plan on the local cluster: a spec that cannot hold the load it declares is told
(condition, Warning Event, one Slack message) with the resource it lacks; raising it clears it."""

from __future__ import annotations

import json
import time
from typing import Any

from testbed.cluster import Cluster
from testbed.operators import OperatorProcesses
from testbed.slack_stub import SlackStub, token_secret

# 0.001 uploads/s of 1 MB originals kept a year: some 16 to 24 GB per copy (the variants'
# bytes come from the measured costs), so one shard needs a volume of 20 to 30 GB with the
# 20 % headroom, more than 10Gi; four shards need 5 to 8 GB each.
CAPACITY = {
    "uploadsPerSecond": 0.001,
    "reads": {"variants": 5, "onDemand": 1, "originals": 1},
    "originalSize": {"mean": "1M", "p99": "4M", "megapixels": 2},
    "retentionYears": 1,
    "failureBudget": {"datacenters": 0, "frontendSpares": 0, "storageReplicaLosses": 0},
}


def imageserver(cluster: Cluster, namespace: str) -> dict[str, Any]:
    return dict(json.loads(cluster.kubectl("get", "imgs", "planned", "-n", namespace, "-o", "json")))


def capacity_condition(cluster: Cluster, namespace: str) -> dict[str, Any]:
    conditions = imageserver(cluster, namespace).get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == "CapacityInsufficient"), {})


def eventually(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        time.sleep(0.5)


def apply(cluster: Cluster, namespace: str, shards: int) -> None:
    manifest = {
        "apiVersion": "imageserver.dev/v1alpha1",
        "kind": "ImageServer",
        "metadata": {"name": "planned"},
        "spec": {
            "version": "1.0.0",
            "datacenters": [{"name": "dc-a"}],
            "shards": shards,
            "storage": {"replicas": 1, "writeQuorum": 1, "volumeSize": "10Gi"},
            # Far from the measured costs' latency limit: only storage is short here.
            "slo": {"latency": {"thresholdSeconds": 2.5}},
            "capacity": CAPACITY,
            "notifications": {"slack": {"channel": "#capacity", "tokenSecretRef": {"name": "slack"}}},
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def test_a_spec_short_of_its_declared_load_is_told_once_and_clears_when_raised(
    cluster: Cluster, namespace: str, operators: OperatorProcesses
) -> None:
    secret = token_secret()
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(secret))
    with SlackStub() as stub:
        # The SLO loop runs (it tells Slack); no Prometheus answers there, which changes nothing here.
        operators.start(
            extra=[
                "--prometheus-url",
                "http://127.0.0.1:9",
                "--slo-seconds",
                "1",
                "--slack-base-url",
                stub.base_url,
            ]
        )
        apply(cluster, namespace, shards=1)

        def short() -> dict[str, Any]:
            return capacity_condition(cluster, namespace)

        eventually("CapacityInsufficient=True", lambda: short().get("status") == "True", 60)
        told = short()
        assert told["reason"] == "SpecShortOfPlan"
        assert "storage.volumeSize: short by" in told["message"], told["message"]
        assert told["message"].count("short by") == 1, told["message"]
        planned = imageserver(cluster, namespace)["status"]["capacity"]
        assert planned["short"] and planned["short"][0].startswith("storage.volumeSize")
        assert "make bench-capacity" in planned["unitCosts"]
        print(f"condition: {told['message']}\nsummary: {planned['summary']}")

        def capacity_messages() -> list[dict[str, Any]]:
            return [m for m in stub.messages() if "CapacityInsufficient" in m.get("text", "")]

        eventually("the Slack message", lambda: len(capacity_messages()) == 1, 30)
        time.sleep(4)  # a few more SLO cycles and reconciles: still one message, one Event
        assert len(capacity_messages()) == 1
        listed = cluster.kubectl(
            "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=planned", "-o", "json"
        )
        warnings = [e for e in json.loads(listed)["items"] if e["reason"] == "SpecShortOfPlan"]
        assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
        assert "storage.volumeSize" in warnings[0]["message"]

        apply(cluster, namespace, shards=4)
        eventually("CapacityInsufficient=False", lambda: short().get("status") == "False", 60)
        assert short()["reason"] == "SpecCarriesPlan"
        after = imageserver(cluster, namespace)
        assert after["status"]["capacity"].get("short", []) == []
        assert after["spec"]["shards"] == 4  # the user's, untouched
        assert len(capacity_messages()) == 1
