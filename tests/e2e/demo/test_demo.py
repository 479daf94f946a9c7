"""`make demo`, shortened (no wait for the undrain): the story goes as told, the results are
written, and nothing is left running."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from testbed import demo
from testbed.cluster import Cluster


@pytest.mark.timeout(900)
def test_the_demo_tells_its_story_and_leaves_its_results(cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    assert demo.main(["--out", str(out), "--short"]) == 0

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
    # No process of the demo is left: imageservers and Prometheus (their files are in its
    # workdir), and the operator (it watched the demo's namespace).
    for pattern in ("imageserver-demo-", "--namespace demo-"):
        left = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True, check=False)
        assert left.stdout == "", (pattern, left.stdout)
