"""Acceptance: a bad rollout under real traffic is rolled back by the operator on its own.

Real pieces: the API server and controllers, the operator (reconcile and SLO loops), the
pod runner's imageserver processes, Prometheus with the generated rules, the Slack stub.
The bad build is the test bed's: processes of revision 1.1.0 fail half their requests.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import samples
from operator_processes import OperatorProcesses

from testbed.cluster import Cluster
from testbed.podrunner import PodRunner
from testbed.prometheus import Prometheus
from testbed.slack_stub import SlackStub


@pytest.fixture
def stub() -> Iterator[SlackStub]:
    with SlackStub() as running:
        yield running


def test_a_bad_rollout_is_rolled_back_within_two_minutes(
    cluster: Cluster,
    namespace: str,
    operators: OperatorProcesses,
    prometheus: Callable[..., Prometheus],
    stub: SlackStub,
    tmp_path: Path,
) -> None:
    spec = {
        "version": "1.0.0",
        "datacenters": [{"name": "dc-a", "frontendReplicas": 1}, {"name": "dc-b", "frontendReplicas": 1}],
        "storage": {"replicas": 1, "writeQuorum": 1},
        "notifications": {"slack": {"channel": "#oncall", "tokenSecretRef": {"name": "slack"}}},
    }

    def apply(version: str) -> None:
        body = {
            "apiVersion": "imageserver.dev/v1alpha1",
            "kind": "ImageServer",
            "metadata": {"name": "shop"},
            "spec": {**spec, "version": version},
        }
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))

    cluster.kubectl("create", "secret", "generic", "slack", "-n", namespace, "--from-literal=token=xoxb-test")
    runner = PodRunner(cluster, namespace, tmp_path / "pods", faults={"1.1.0": 0.5}).start()
    operators.start()  # reconcile only, until Prometheus has its rules
    try:
        apply("1.0.0")
        frontends = runner.wait_for_frontends(2)
        rules = tmp_path / "rules.yml"
        deadline = time.monotonic() + 30
        while not rules.exists() and time.monotonic() < deadline:
            text = cluster.kubectl(
                "get",
                "cm",
                "shop-slo-rules",
                "-n",
                namespace,
                "-o",
                "jsonpath={.data.rules\\.yml}",
                check=False,
            )
            if text.startswith("groups"):
                rules.write_text(text)
            time.sleep(0.5)
        server = prometheus(
            [
                {
                    "job_name": "pods",
                    "file_sd_configs": [{"files": [str(runner.targets)], "refresh_interval": "1s"}],
                }
            ],
            [rules],
        )
        runner.wait_healthy(4)  # per datacenter one storage replica and one frontend
        data = samples.jpeg(80, 60, seed=3)
        for _ in range(50):  # a 503 while a frontend's shard map catches up is retried, as a client would
            answer = requests.post(f"{frontends[0].url}/v1/images", data=data, timeout=10)
            if answer.status_code == 201:
                break
            time.sleep(0.4)
        assert answer.status_code == 201, answer.text
        paths = [f"/v1/images/{answer.json()['id']}"]
        # A second operator process, now with the SLO loop (the first one only reconciles).
        operators.stop_all()
        operators.start(
            extra=["--prometheus-url", server.url, "--slo-seconds", "2", "--slack-base-url", stub.base_url]
        )
        traffic = threading.Thread(target=runner.drive, args=(20, 150, paths), daemon=True)
        traffic.start()
        time.sleep(10)  # a healthy baseline

        apply("1.1.0")  # the bad build
        errors_from = None
        rolled_back = None
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            if errors_from is None and server.query(
                'imageserver_http_requests_total{code="500", revision="1.1.0"}'
            ):
                errors_from = time.monotonic()
            imgs = json.loads(cluster.kubectl("get", "imgs", "shop", "-n", namespace, "-o", "json"))
            if imgs["spec"]["version"] == "1.0.0" and errors_from is not None:
                rolled_back = time.monotonic()
                break
            time.sleep(1)
        assert errors_from is not None, "the bad revision never served errors"
        assert rolled_back is not None, "no rollback within the time limit"
        mitigation = rolled_back - errors_from
        print(f"rolled back {mitigation:.0f}s after the first errors")
        assert mitigation <= 120
        annotations = imgs["metadata"]["annotations"]
        assert json.loads(annotations["imageserver.dev/last-action"])["kind"] == "rollback"
        assert "rolling back to 1.0.0" in annotations["imageserver.dev/rollback-reason"]
        told = time.monotonic() + 20
        while not any("Rolled back 1.0.0" in m["text"] for m in stub.messages()) and time.monotonic() < told:
            time.sleep(0.5)
        assert any("Rolled back 1.0.0" in m["text"] for m in stub.messages())
        assert cluster.kubectl("get", "pm", "-n", namespace, "-o", "name")
    finally:
        runner.stop()
