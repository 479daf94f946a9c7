"""The shape of the local cluster: nodes per datacenter, pins, ports."""

from __future__ import annotations

import socket
from collections import Counter
from pathlib import Path

import pytest

from testbed.cluster import REGION_LABEL, REGIONS, node_manifests
from testbed.processes import StartError, claim_port
from testbed.tools import TOOLS, ToolError, pinned_version


def test_nodes_are_spread_over_three_datacenters_with_room_for_hundreds_of_pods() -> None:
    nodes = node_manifests(per_region=3)["items"]
    assert Counter(n["metadata"]["labels"][REGION_LABEL] for n in nodes) == dict.fromkeys(REGIONS, 3)
    assert all(n["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake" for n in nodes)
    assert sum(int(n["status"]["capacity"]["pods"]) for n in nodes) >= 600
    assert len({n["spec"]["podCIDR"] for n in nodes}) == len(nodes)


def test_every_tool_is_pinned_to_an_exact_version() -> None:
    versions = {tool.name: tool.version() for tool in TOOLS}
    assert versions["kubernetes"].startswith("v1.")
    assert int(versions["kubernetes"].split(".")[1]) >= 33
    assert all(v.count(".") == 2 and "-" not in v for v in versions.values()), versions


def test_pinned_version_reads_block_and_single_line_requires(tmp_path: Path) -> None:
    go_mod = tmp_path / "go.mod"
    go_mod.write_text("module x\n\nrequire (\n\tfoo.dev/a v1.2.3\n\tfoo.dev/ab v0.1.0 // indirect\n)\n")
    assert pinned_version(go_mod, "foo.dev/a") == "v1.2.3"
    assert pinned_version(go_mod, "foo.dev/ab") == "v0.1.0"
    with pytest.raises(ToolError, match=r"does not require foo\.dev/c"):
        pinned_version(go_mod, "foo.dev/c")


def test_a_requested_port_that_is_taken_is_refused_with_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        port = squatter.getsockname()[1]
        monkeypatch.setenv("SOME_PORT", str(port))
        with pytest.raises(StartError, match=f"port {port} .* unset SOME_PORT to let the test bed pick"):
            claim_port("SOME_PORT")
    monkeypatch.delenv("SOME_PORT")
    assert 0 < claim_port("SOME_PORT") < 65536
