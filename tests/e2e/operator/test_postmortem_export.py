"""`imageserver-operator postmortem export` prints a stored Postmortem as markdown."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from testbed.cluster import Cluster


def test_export_prints_the_stored_postmortem(cluster: Cluster, imageserver_crd: str, namespace: str) -> None:
    body = {
        "apiVersion": "imageserver.dev/v1alpha1",
        "kind": "Postmortem",
        "metadata": {"name": "photos-incident-1"},
        "spec": {
            "imageServer": "photos",
            "title": "dc-b failed every request",
            "summary": "dc-b was drained.",
            "timeline": [{"time": "2026-11-21T12:00:00Z", "event": "drained dc-b"}],
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
    assert "photos-incident-1" in cluster.kubectl("get", "pm", "-n", namespace)
    exported = subprocess.run(
        [
            sys.executable,
            "-m",
            "imageserver_operator.cli",
            "postmortem",
            "export",
            "photos-incident-1",
            "-n",
            namespace,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        check=True,
    ).stdout
    assert exported.startswith("# Postmortem: dc-b failed every request\n")
    assert "| 2026-11-21T12:00:00Z | operator | drained dc-b |" in exported
    assert "- TODO: prevent recurrence" not in exported  # action items are a table
    assert "| TODO: prevent recurrence | TODO | TODO |" in exported
