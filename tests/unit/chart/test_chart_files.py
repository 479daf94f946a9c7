"""The chart's files agree with their sources: CRDs, values documentation, images, examples."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from chart_docs import readme_with_table

from imageserver_operator.api.models import ImageServerSpec

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "imageserver-operator"


def test_the_charts_crds_are_the_generated_ones() -> None:
    top = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert chart == top, "the chart's CRDs differ from crds/: run `make generate`"


def test_the_values_table_is_generated_from_the_schema() -> None:
    readme = (CHART / "README.md").read_text()
    assert readme == readme_with_table(readme), "the values table is out of date: run `make generate`"


def test_every_default_value_is_described_by_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def undescribed(node: dict[str, object], part: dict[str, object], prefix: str) -> list[str]:
        props = part.get("properties", {})
        assert isinstance(props, dict)
        missing = []
        for key, value in node.items():
            if key not in props:
                missing.append(prefix + key)
            elif isinstance(value, dict) and "properties" in props[key]:
                missing += undescribed(value, props[key], f"{prefix}{key}.")
        return missing

    assert undescribed(values, schema, "") == []


def test_the_default_image_is_the_one_the_dockerfile_builds() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dockerfile = (ROOT / "images" / "Dockerfile").read_text()
    assert f"--target operator -t {values['image']['repository']}:{chart['appVersion']} " in dockerfile
    assert chart["appVersion"] == project["version"]
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    uid = re.search(r"^USER (\d+):", dockerfile, re.MULTILINE)
    assert uid is not None and f"runAsUser: {uid.group(1)}" in deployment
    default_image = ImageServerSpec.model_fields["image"].default
    assert f"--target imageserver -t {default_image}:{project['version']} " in dockerfile


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_examples_are_valid_imageservers(example: str) -> None:
    body = yaml.safe_load((ROOT / "examples" / example).read_text())
    assert body["kind"] == "ImageServer"
    spec = ImageServerSpec.model_validate(body["spec"])
    assert spec.version == project_version()


def project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])
