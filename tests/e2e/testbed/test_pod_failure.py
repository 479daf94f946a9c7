"""The test bed can make pods fail on purpose, through KWOK's failure stage."""

from __future__ import annotations

import json
import time

from testbed.cluster import FAIL_POD_LABEL, Cluster


def pod(name: str, labels: dict[str, str]) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "app", "image": "example.invalid/app:v1"}],
            },
        }
    )


def phase_after(cluster: Cluster, namespace: str, name: str, wanted: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    phase = ""
    while time.monotonic() < deadline:
        phase = cluster.kubectl("get", "pod", name, "-n", namespace, "-o", "jsonpath={.status.phase}")
        if phase == wanted:
            break
        time.sleep(0.25)
    return phase


def test_a_pod_marked_for_the_failure_stage_ends_failed(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=pod("doomed", {FAIL_POD_LABEL: "true"}))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=pod("healthy", {}))
    assert phase_after(cluster, namespace, "doomed", "Failed", 30) == "Failed"
    status = json.loads(cluster.kubectl("get", "pod", "doomed", "-n", namespace, "-o", "json"))["status"]
    assert status["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 1
    # The unmarked pod is untouched by the failure stage.
    assert phase_after(cluster, namespace, "healthy", "Running", 10) == "Running"
