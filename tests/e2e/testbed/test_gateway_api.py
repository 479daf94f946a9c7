"""The Gateway API CRDs (standard channel, from the pinned Go module) install into the local
cluster, and an HTTPRoute with per-datacenter weights is accepted."""

from __future__ import annotations

import json

from testbed.cluster import Cluster, install_gateway_api


def test_gateway_api_crds_install_and_accept_a_weighted_httproute(cluster: Cluster, namespace: str) -> None:
    names = install_gateway_api(cluster)
    assert {"httproutes.gateway.networking.k8s.io", "gateways.gateway.networking.k8s.io"} <= set(names)
    assert install_gateway_api(cluster) == names  # installing again is a no-op

    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "images"},
        "spec": {
            "parentRefs": [{"name": "edge"}],
            "rules": [
                {
                    "backendRefs": [
                        {"name": "images-frontend-dc-a", "port": 8080, "weight": 1},
                        {"name": "images-frontend-dc-b", "port": 8080, "weight": 0},
                    ],
                }
            ],
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(route))
    stored = json.loads(cluster.kubectl("get", "httproute", "images", "-n", namespace, "-o", "json"))
    weights = [b["weight"] for b in stored["spec"]["rules"][0]["backendRefs"]]
    assert weights == [1, 0]
