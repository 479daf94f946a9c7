"""The API server enforces a CRD's CEL rules (x-kubernetes-validations) with their messages."""

from __future__ import annotations

import json
from typing import Any

from testbed.cluster import Cluster

GROUP = "testbed.imageserver.dev"
MESSAGE = "minReplicas must not be greater than maxReplicas"


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {
                                        "minReplicas": {"type": "integer"},
                                        "maxReplicas": {"type": "integer"},
                                    },
                                    "x-kubernetes-validations": [
                                        {"rule": "self.minReplicas <= self.maxReplicas", "message": MESSAGE}
                                    ],
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def widget(name: str, low: int, high: int) -> str:
    return json.dumps(
        {
            "apiVersion": f"{GROUP}/v1",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": {"minReplicas": low, "maxReplicas": high},
        }
    )


def test_cel_rule_rejects_an_invalid_object_with_its_message(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(crd()))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/widgets.{GROUP}")

    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=widget("fine", 1, 3))
    refused = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=widget("bad", 5, 3), check=False)
    assert f'The Widget "bad" is invalid: spec: Invalid value: {MESSAGE}' in refused
    assert "bad" not in cluster.kubectl("get", "widgets", "-n", namespace, "-o", "name")
