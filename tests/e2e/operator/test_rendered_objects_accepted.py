"""Any spec the API server accepts renders objects the API server accepts (server-side dry run)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from imageserver_operator.api.models import ImageServerSpec
from imageserver_operator.core.render import Environment, Owner, render
from testbed.cluster import Cluster


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(
        st.lists(
            st.sampled_from(["dc-a", "dc-b", "dc-c", "eu", "us-east-1x"]), min_size=1, max_size=3, unique=True
        )
    )
    replicas = draw(st.integers(1, 5))
    spec: dict[str, Any] = {
        "version": draw(st.from_regex(r"\A[a-z0-9]([a-z0-9.-]{0,14}[a-z0-9])?\Z")),
        "datacenters": [
            {"name": n, "frontendReplicas": draw(st.integers(1, 6)), "weight": draw(st.integers(0, 1000))}
            for n in names
        ],
        "shards": draw(st.integers(1, 6)),
        "storage": {
            "replicas": replicas,
            "writeQuorum": draw(st.integers(1, replicas)),
            "volumeSize": draw(st.sampled_from(["1Gi", "500Mi", "2Ti"])),
            "storageClassName": draw(st.sampled_from(["", "fast-ssd"])),
            "crossDatacenter": draw(st.sampled_from(["async", "sync"])),
        },
        "variants": draw(
            st.lists(st.from_regex(r"\A[1-9][0-9]{1,3}x[1-9][0-9]{1,3}\Z"), max_size=4, unique=True)
        ),
    }
    return spec


def dry_run(cluster: Cluster, namespace: str, objects: list[dict[str, Any]]) -> str:
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    return cluster.kubectl(
        "apply", "-n", namespace, "--dry-run=server", "--server-side", "-f", "-", input=body, check=False
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=specs(), drained=st.booleans())
def test_any_accepted_spec_renders_objects_the_api_server_accepts(
    cluster: Cluster,
    imageserver_crd: str,
    gateway_api: list[str],
    namespace: str,
    spec: dict[str, Any],
    drained: bool,
) -> None:
    resource = {
        "apiVersion": "imageserver.dev/v1alpha1",
        "kind": "ImageServer",
        "metadata": {"name": "prop"},
        "spec": spec,
    }
    # The property is about specs the API server accepts; the refused ones have their own tests.
    assume("serverside-applied (server dry run)" in dry_run(cluster, namespace, [resource]))
    model = ImageServerSpec.model_validate(spec)
    env = Environment(
        drained=frozenset({spec["datacenters"][0]["name"]}) if drained else frozenset(),
        gateway_api=True,
    )
    objects = render(Owner("prop", namespace, "6f1c0e55-0000-4000-8000-00000000abcd", 3), model, env)
    answer = dry_run(cluster, namespace, objects)
    assert answer.count("serverside-applied (server dry run)") == len(objects), answer
