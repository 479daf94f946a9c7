"""`imageserver-operator postmortem export` prints a stored Postmortem as markdown; people move
a Postmortem through its review."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from testbed.cluster import Cluster


def postmortem(name: str, **spec: Any) -> str:
    body = {"apiVersion": "imageserver.dev/v1alpha1", "kind": "Postmortem", "metadata": {"name": name}}
    return json.dumps({**body, "spec": {"imageServer": "photos", **spec}})


def cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imageserver_operator.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        check=False,
    )


def test_export_prints_the_stored_postmortem(cluster: Cluster, imageserver_crd: str, namespace: str) -> None:
    timeline = [{"time": "2026-11-21T12:00:00Z", "event": "drained dc-b"}]
    body = postmortem(
        "photos-incident-1", title="dc-b failed every request", summary="dc-b was drained.", timeline=timeline
    )
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=body)
    assert "photos-incident-1" in cluster.kubectl("get", "pm", "-n", namespace)
    done = cli(cluster, "postmortem", "export", "photos-incident-1", "-n", namespace)
    assert done.returncode == 0, done.stderr
    exported = done.stdout
    assert exported.startswith("# Postmortem: dc-b failed every request\n")
    assert "| 2026-11-21T12:00:00Z | operator | drained dc-b |" in exported
    assert "- TODO: prevent recurrence" not in exported  # action items are a table
    assert "| P2 | TODO: prevent recurrence | TODO | TODO |" in exported


def test_people_move_a_postmortem_through_its_review(
    cluster: Cluster, imageserver_crd: str, namespace: str
) -> None:
    """Draft → InReview → Published, in order, and published only with an owner: the API server
    says so, and the CLI passes its message on."""
    body = postmortem("photos-incident-2", title="a bad build", actionItems=[{"description": "add a canary"}])
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=body)

    def patch(review: dict[str, str]) -> str:
        change = json.dumps({"spec": {"review": review}})
        return cluster.kubectl(
            "patch", "pm", "photos-incident-2", "-n", namespace, "--type=merge", "-p", change, check=False
        )

    refused = patch({"status": "Published"})
    assert "review.status moves Draft → InReview → Published" in refused, refused
    published = cli(cluster, "postmortem", "publish", "photos-incident-2", "-n", namespace)
    assert published.returncode == 1 and "review.status moves" in published.stderr, published.stderr
    assert cli(cluster, "postmortem", "review", "photos-incident-2", "-n", namespace).returncode == 0
    no_owner = cli(cluster, "postmortem", "publish", "photos-incident-2", "-n", namespace)
    assert no_owner.returncode == 1 and "published with an owner" in no_owner.stderr, no_owner.stderr
    done = cli(cluster, "postmortem", "publish", "photos-incident-2", "-n", namespace, "--owner", "ana")
    assert done.returncode == 0, done.stderr
    review = json.loads(
        cluster.kubectl("get", "pm", "photos-incident-2", "-n", namespace, "-o", "jsonpath={.spec.review}")
    )
    assert (review["status"], review["owner"]) == ("Published", "ana")
