"""Rendering: golden files reviewed by a person, and the properties every render keeps."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from imageserver import topology as frontend_topology
from imageserver_operator.api.models import ImageServerSpec
from imageserver_operator.core.reconcile import plan, stale
from imageserver_operator.core.render import Environment, Owner, key, render, topology

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "operator" / "render"
SAMPLES = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())


def load(sample: str) -> tuple[Owner, ImageServerSpec, Environment]:
    raw = yaml.safe_load((GOLDEN / sample / "input.yaml").read_text())
    env = raw["environment"]
    return (
        Owner(**raw["owner"]),
        ImageServerSpec.model_validate(raw["spec"]),
        Environment(
            frozenset(env["drained"]), env["gatewayApi"], env["serviceMonitor"], env["serviceMonitor"]
        ),
    )


class GoldenDumper(yaml.SafeDumper):
    """Readable golden files: multi-line strings (the topology JSON) as literal blocks."""


GoldenDumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


@pytest.mark.parametrize("sample", SAMPLES)
def test_rendered_objects_match_the_reviewed_golden_files(sample: str) -> None:
    rendered = yaml.dump_all(render(*load(sample)), Dumper=GoldenDumper, sort_keys=False, width=100)
    golden = GOLDEN / sample / "output.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(rendered)
    assert rendered == golden.read_text(), f"rendering changed: review, then UPDATE_GOLDEN=1 ({golden})"


@pytest.mark.parametrize("sample", SAMPLES)
def test_every_object_is_owned_and_every_pod_is_locked_down(sample: str) -> None:
    owner, spec, env = load(sample)
    objects = render(owner, spec, env)
    assert len({(o["kind"], o["metadata"]["name"]) for o in objects}) == len(objects)
    for obj in objects:
        (ref,) = obj["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
            "ImageServer",
            owner.name,
            owner.uid,
            True,
        )
        assert len(obj["metadata"]["name"]) <= 63
    for workload in by_kind(objects, "Deployment") + by_kind(objects, "StatefulSet"):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (container,) = pod["containers"]
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert container["image"] == f"{spec.image}:{spec.version}"
        region = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert region["nodeSelectorTerms"][0]["matchExpressions"][0]["key"] == "topology.kubernetes.io/region"


def test_budgets_never_let_a_shard_lose_its_write_quorum_and_rollouts_keep_capacity() -> None:
    owner, spec, env = load("three-datacenters")
    objects = render(owner, spec, env)
    statefulsets = by_kind(objects, "StatefulSet")
    assert len(statefulsets) == 3 * 2
    budgets = {b["metadata"]["name"]: b["spec"] for b in by_kind(objects, "PodDisruptionBudget")}
    for sts in statefulsets:
        assert sts["spec"]["replicas"] - budgets[sts["metadata"]["name"]]["maxUnavailable"] >= 2  # W
    for deployment in by_kind(objects, "Deployment"):
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_a_drained_datacenter_gets_no_traffic_in_the_route_or_the_topology() -> None:
    owner, spec, env = load("three-datacenters")
    objects = render(owner, spec, env)
    (route,) = by_kind(objects, "HTTPRoute")
    weights = {b["name"]: b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]}
    assert weights == {"photos-frontend-dc-a": 50, "photos-frontend-dc-b": 50, "photos-frontend-dc-c": 0}
    (config,) = [c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"] == "photos-topology"]
    shard_map = json.loads(config["data"]["topology.json"])
    assert [(d["name"], d["weight"], d["drained"]) for d in shard_map["datacenters"]] == [
        ("dc-a", 50, False),
        ("dc-b", 50, False),
        ("dc-c", 0, True),
    ]


def test_the_topology_is_what_the_frontend_parses() -> None:
    owner, spec, env = load("three-datacenters")
    parsed = frontend_topology.parse(topology(owner, spec, env))
    assert parsed.write_quorum == 2 and parsed.cross_datacenter == "sync"
    dc_a = parsed.datacenter("dc-a")
    assert dc_a is not None and [s.name for s in dc_a.shards] == ["s0", "s1"]
    assert (
        dc_a.shards[1].replicas[2] == "http://photos-storage-dc-a-s1-2.photos-storage-dc-a-s1.prod.svc:8080"
    )


def test_optional_apis_only_when_installed() -> None:
    owner, spec, _ = load("minimal")
    kinds = {o["kind"] for o in render(owner, spec, Environment())}
    assert "HTTPRoute" not in kinds and "ServiceMonitor" not in kinds
    kinds = {
        o["kind"]
        for o in render(
            owner, spec, Environment(gateway_api=True, service_monitor=True, prometheus_rule=True)
        )
    }
    assert {"HTTPRoute", "ServiceMonitor", "PrometheusRule"} <= kinds


def test_objects_no_longer_rendered_are_stale_and_nothing_else_is() -> None:
    owner, spec, env = load("three-datacenters")
    before = {key(o): o for o in render(owner, spec, env)}
    fewer = spec.model_copy(update={"datacenters": spec.datacenters[:2]})
    after = render(owner, fewer, env)
    gone = {o["metadata"]["name"] for o in stale(after, before)}
    assert gone and all("dc-c" in name for name in gone)
    # The topology, the route, and the rules (the removed datacenter's silence alert goes).
    changed = [o for o in after if o["kind"] in ("ConfigMap", "PrometheusRule", "HTTPRoute")]
    assert [o["metadata"]["name"] for o in changed] == [
        "photos-topology",
        "photos-slo-rules",
        "photos-slo",
        "photos",
    ]
    assert plan(after, before) == changed


def test_placement_reaches_every_pod_beside_its_region_and_nothing_when_unset() -> None:
    owner, spec, env = load("three-datacenters")
    placed = spec.model_copy(
        update={
            "placement": ImageServerSpec.model_validate(
                {
                    **spec.model_dump(by_alias=True),
                    "placement": {
                        "nodeSelector": {"pool": "images"},
                        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
                    },
                }
            ).placement
        }
    )
    workloads = [
        *by_kind(render(owner, placed, env), "Deployment"),
        *by_kind(render(owner, placed, env), "StatefulSet"),
    ]
    assert workloads
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"pool": "images"}
        assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]
        region = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert region["nodeSelectorTerms"][0]["matchExpressions"][0]["key"] == "topology.kubernetes.io/region"
    for workload in [
        *by_kind(render(owner, spec, env), "Deployment"),
        *by_kind(render(owner, spec, env), "StatefulSet"),
    ]:
        assert "nodeSelector" not in workload["spec"]["template"]["spec"]
        assert "tolerations" not in workload["spec"]["template"]["spec"]


@pytest.mark.parametrize(
    ("field", "value", "variable"),
    [("variant_format", "auto", "IMAGESERVER_VARIANT_FORMAT"), ("engine", "vips", "IMAGESERVER_ENGINE")],
)
def test_frontend_settings_reach_the_frontends_only_when_set(field: str, value: str, variable: str) -> None:
    """The default renders as before: frontends of an ImageServer that never set it keep their
    pod template through an operator upgrade. It is an environment variable, so a rollback to
    a release that does not know it still starts."""
    owner, spec, env = load("three-datacenters")
    changed = spec.model_copy(update={field: value})
    flag = "--" + field.replace("_", "-")
    for rendered, expected in ((spec, None), (changed, value)):
        for deployment in by_kind(render(owner, rendered, env), "Deployment"):
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            given = {e["name"]: e.get("value") for e in container["env"]}.get(variable)
            assert given == expected
            assert not any(a.startswith(flag) for a in container["args"])
