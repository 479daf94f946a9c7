"""The checked-in CRDs are exactly what the models generate, and say what users need."""

from __future__ import annotations

from pathlib import Path

import yaml

from imageserver_operator import cli
from imageserver_operator.api import crds

REPO = Path(__file__).resolve().parents[3]


def test_checked_in_crds_match_the_models() -> None:
    assert cli.main(["crds", "--check", str(REPO / "crds")]) == 0, "crds/ is out of date: run `make generate`"


def test_a_changed_model_is_caught_as_drift(tmp_path: Path) -> None:
    for name, crd in crds.all_crds().items():
        (tmp_path / name).write_text(crds.to_yaml(crd).replace("Shards per datacenter.", "Shards."))
    assert cli.main(["crds", "--check", str(tmp_path)]) == 1


def test_schema_is_structural_and_explains_every_spec_field() -> None:
    crd = yaml.safe_load((REPO / "crds" / "imageserver.dev_imageservers.yaml").read_text())
    version = crd["spec"]["versions"][0]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]

    def walk(node: dict[str, object], path: str) -> None:
        assert "$ref" not in node and "anyOf" not in node, path
        assert node.get("type"), f"{path} has no type"
        # A map's values have a schema (structural: never beside properties, never `false`).
        values = node.get("additionalProperties")
        assert values is None or (isinstance(values, dict) and "properties" not in node), path
        if isinstance(values, dict):
            walk(values, f"{path}{{}}")
        properties = node.get("properties", {})
        assert isinstance(properties, dict)
        for name, child in properties.items():
            assert child.get("description"), f"{path}.{name} has no description (kubectl explain)"
            walk(child, f"{path}.{name}")
        items = node.get("items")
        if isinstance(items, dict):
            walk(items, f"{path}[]")

    walk(spec, "spec")
    assert crd["spec"]["names"]["shortNames"] == ["imgs"]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Ready",
        "Datacenters",
        "Shards",
        "Version",
        "Rollout",
        "Budget",
        "Age",
    ]
    assert version["subresources"] == {"status": {}}
