"""`make demo`, shortened (no wait for the undrain): the story goes as told, the results are
written, and nothing is left running. On simulated nodes (the pod runner), and on the real
nodes' containers with the chart's operator in the cluster (`REAL_NODES=1`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from testbed import demo
from testbed.cluster import Cluster


def told(cluster: Cluster, out: Path) -> None:
    """demo-out/ says what happened, and the demo's namespace is on its way out."""
    summary = (out / "summary.md").read_text()
    assert "| bad rollout | roll back to 1.0.0 |" in summary
    assert "| sick datacenter | drain dc-b |" in summary
    assert "| 0 of " in summary  # no image lost
    assert len(list(out.glob("postmortem-*.md"))) == 2
    assert all("## Timeline" in p.read_text() for p in out.glob("postmortem-*.md"))
    messages = json.loads((out / "slack-messages.json").read_text())
    assert any("Rolled back 1.0.0" in m["text"] for m in messages)
    assert any("Drained dc-b" in m["text"] for m in messages)
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    namespaces = cluster.kubectl("get", "namespaces", "-o", "name")
    leftovers = [n for n in namespaces.split() if n.startswith("namespace/demo-")]
    phases = [json.loads(cluster.kubectl("get", n, "-o", "json"))["status"]["phase"] for n in leftovers]
    assert all(phase == "Terminating" for phase in phases)


@pytest.mark.timeout(900)
def test_the_demo_tells_its_story_and_leaves_its_results(cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    assert demo.main(["--out", str(out), "--short", "--kwok"]) == 0
    told(cluster, out)
    # No process of the demo is left: imageservers and Prometheus (their files are in its
    # workdir), and the operator (it watched the demo's namespace).
    for pattern in ("imageserver-demo-", "--namespace demo-"):
        left = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True, check=False)
        assert left.stdout == "", (pattern, left.stdout)


@pytest.mark.timeout(1200)
def test_the_demo_tells_its_story_on_real_containers(
    cluster: Cluster, real_nodes: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "demo-out"
    assert demo.main(["--out", str(out), "--short"]) == 0
    told(cluster, out)
    # Prometheus and the Slack stub were the demo's own processes; the game day's rules went.
    left = subprocess.run(["pgrep", "-f", "imageserver-demo-"], capture_output=True, text=True, check=False)
    assert left.stdout == "", left.stdout
    rules = subprocess.run(
        ["nsenter", "--net=/run/netns/isre-nodes", "iptables", "-S", "FORWARD"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "game day" not in rules.stdout
