"""ImageServer spec → the Kubernetes objects that run it. Pure: same input, same objects.

Per datacenter: a StatefulSet, headless Service and PodDisruptionBudget per shard, and a
frontend Deployment, Service and PodDisruptionBudget. Once: the topology ConfigMap the
frontends read, a NetworkPolicy that lets only frontends (and Prometheus) reach storage,
an HTTPRoute with per-datacenter weights and a ServiceMonitor when their APIs exist.
Every object is owned by the ImageServer, so deleting it deletes them all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from imageserver_operator.api.models import GROUP, VERSION, DatacenterSpec, ImageServerSpec, Resources
from imageserver_operator.core import slo

Manifest = dict[str, Any]
PORT = 8080
UID = 10001
TOPOLOGY_MOUNT = "/etc/imageserver"
LABEL_PREFIX = GROUP  # our own labels: imageserver.dev/datacenter, /shard, /revision


@dataclass(frozen=True)
class Owner:
    name: str
    namespace: str
    uid: str
    generation: int = 1


@dataclass(frozen=True)
class Environment:
    """Facts about the cluster and the automation that shape the objects."""

    drained: frozenset[str] = field(default_factory=frozenset)  # datacenters routed no traffic
    gateway_api: bool = False  # HTTPRoute CRD installed
    service_monitor: bool = False  # monitoring.coreos.com ServiceMonitor CRD installed
    prometheus_rule: bool = False  # monitoring.coreos.com PrometheusRule CRD installed
    # The revision each datacenter runs (status.rollout); absent: spec.version.
    revisions: Mapping[str, str] = field(default_factory=dict)
    # The shards each datacenter's topology lists and the map's generation (shards.py: new
    # shards join once their storage is ready); absent: spec.shards and the spec's generation.
    shards: Mapping[str, int] = field(default_factory=dict)
    topology_generation: int | None = None

    def revision(self, spec: ImageServerSpec, dc: str) -> str:
        return self.revisions.get(dc) or spec.version


def _labels(owner: Owner, component: str, **extra: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "imageserver",
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "imageserver-operator",
        **{f"{LABEL_PREFIX}/{key}": value for key, value in extra.items()},
    }


def _selector(owner: Owner, component: str, **extra: str) -> dict[str, str]:
    labels = _labels(owner, component, **extra)
    del labels["app.kubernetes.io/managed-by"]
    return labels


def _metadata(owner: Owner, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels,
        "ownerReferences": [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "ImageServer",
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


def storage_name(owner: Owner, dc: str, shard: int) -> str:
    return f"{owner.name}-storage-{dc}-s{shard}"


def frontend_name(owner: Owner, dc: str) -> str:
    return f"{owner.name}-frontend-{dc}"


def storage_token_name(owner: Owner) -> str:
    return f"{owner.name}-storage-token"


STORAGE_TOKEN_KEY = "token"


def storage_token(owner: Owner, token: str) -> Manifest:
    """The Secret storage nodes require of writers, and frontends and storage nodes present.
    Created once, never applied: the operator writes it and never reads it back."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(owner, storage_token_name(owner), _labels(owner, "imageserver")),
        "type": "Opaque",
        "stringData": {STORAGE_TOKEN_KEY: token},
    }


def topology_name(owner: Owner) -> str:
    return f"{owner.name}-topology"


def _resources(resources: Resources) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("requests", "limits"):
        values = {k: v for k, v in getattr(resources, kind).model_dump().items() if v}
        if values:
            out[kind] = values
    return out


# On SIGTERM a pod stays serving (not ready) while endpoints and the gateway let go of it,
# then gives requests in flight this long to finish; the kubelet waits for both, and a bit.
DRAIN_DELAY_SECONDS = 5
SHUTDOWN_TIMEOUT_SECONDS = 30
GRACE_SECONDS = DRAIN_DELAY_SECONDS + SHUTDOWN_TIMEOUT_SECONDS + 5


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _region_affinity(dc: DatacenterSpec, anti: dict[str, str], required: bool) -> dict[str, Any]:
    spread = {"labelSelector": {"matchLabels": anti}, "topologyKey": "kubernetes.io/hostname"}
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {
                                "key": "topology.kubernetes.io/region",
                                "operator": "In",
                                "values": [dc.region or dc.name],
                            }
                        ]
                    }
                ]
            }
        },
        "podAntiAffinity": (
            {"requiredDuringSchedulingIgnoredDuringExecution": [spread]}
            if required
            else {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 100, "podAffinityTerm": spread}
                ]
            }
        ),
    }


def _container(
    owner: Owner, spec: ImageServerSpec, dc: str, args: list[str], resources: Resources, *, revision: str
) -> dict[str, Any]:
    env = {
        "IMAGESERVER_DATACENTER": dc,
        "IMAGESERVER_REVISION": revision,
        "IMAGESERVER_HOST": "0.0.0.0",
        "IMAGESERVER_PORT": str(PORT),
        "IMAGESERVER_DRAIN_DELAY": str(DRAIN_DELAY_SECONDS),
        "IMAGESERVER_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT_SECONDS),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return {
        "name": "imageserver",
        "image": f"{spec.image}:{revision}",
        "args": args,
        "env": [
            *({"name": k, "value": v} for k, v in env.items()),
            {
                "name": "IMAGESERVER_STORAGE_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": storage_token_name(owner), "key": STORAGE_TOKEN_KEY}},
            },
        ],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "resources": _resources(resources),
        "securityContext": _container_security(),
    }


def _scrape_annotations() -> dict[str, str]:
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(PORT), "prometheus.io/path": "/metrics"}


def storage_objects(
    owner: Owner, spec: ImageServerSpec, dc: DatacenterSpec, shard: int, revision: str
) -> list[Manifest]:
    name = storage_name(owner, dc.name, shard)
    selector = _selector(owner, "storage", datacenter=dc.name, shard=f"s{shard}")
    labels = _labels(owner, "storage", datacenter=dc.name, shard=f"s{shard}")
    claim: dict[str, Any] = {
        "metadata": {"name": "data"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": spec.storage.volume_size}},
        },
    }
    if spec.storage.storage_class_name:
        claim["spec"]["storageClassName"] = spec.storage.storage_class_name
    # The topology tells a storage node where to deliver the copies other datacenters are
    # owed, and, with its shard's name, which images it holds but no longer owns.
    args = [
        "storage",
        "--data",
        "/data",
        "--topology",
        f"{TOPOLOGY_MOUNT}/topology.json",
        "--shard",
        f"s{shard}",
    ]
    container = _container(owner, spec, dc.name, args, spec.resources.storage, revision=revision)
    if spec.storage.accept_unauthenticated_writes:
        container["env"].append({"name": "IMAGESERVER_ACCEPT_UNAUTHENTICATED_WRITES", "value": "true"})
    container["volumeMounts"] = [
        {"name": "data", "mountPath": "/data"},
        {"name": "topology", "mountPath": TOPOLOGY_MOUNT, "readOnly": True},
    ]
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(owner, name, labels),
        "spec": {
            "serviceName": name,
            "replicas": spec.storage.replicas,
            "podManagementPolicy": "Parallel",  # replicas are peers, not a chain
            "selector": {"matchLabels": selector},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": labels, "annotations": _scrape_annotations()},
                "spec": {
                    "affinity": _region_affinity(dc, selector, required=True),
                    **spec.placement.pod_fields(),
                    "securityContext": _pod_security(),
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": GRACE_SECONDS,
                    "containers": [container],
                    "volumes": [{"name": "topology", "configMap": {"name": topology_name(owner)}}],
                },
            },
            "volumeClaimTemplates": [claim],
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, name, labels),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # replicas are addressed by name, ready or not
            "selector": selector,
            "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    budget = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner, name, labels),
        # Evicting more than R - W replicas would leave the shard unable to acknowledge writes.
        "spec": {
            "maxUnavailable": spec.storage.replicas - spec.storage.write_quorum,
            "selector": {"matchLabels": selector},
        },
    }
    return [statefulset, service, budget]


def frontend_objects(
    owner: Owner, spec: ImageServerSpec, dc: DatacenterSpec, revision: str
) -> list[Manifest]:
    name = frontend_name(owner, dc.name)
    selector = _selector(owner, "frontend", datacenter=dc.name)
    labels = _labels(owner, "frontend", datacenter=dc.name)
    args = [
        "frontend",
        "--topology",
        f"{TOPOLOGY_MOUNT}/topology.json",
        "--variants",
        ",".join(spec.variants),
    ]
    container = _container(owner, spec, dc.name, args, spec.resources.frontend, revision=revision)
    if spec.trusted_proxies:
        proxies = ",".join(spec.trusted_proxies)
        container["env"].append({"name": "IMAGESERVER_TRUSTED_PROXIES", "value": proxies})
    if spec.variant_format != "original":
        # An environment variable, not a flag: a rollback to a release without the setting
        # ignores it instead of refusing to start. Unset by default: frontends of an
        # ImageServer that never set it keep their pod template through an operator upgrade.
        container["env"].append({"name": "IMAGESERVER_VARIANT_FORMAT", "value": spec.variant_format})
    if spec.engine != "pillow":  # likewise
        container["env"].append({"name": "IMAGESERVER_ENGINE", "value": spec.engine})
    container["volumeMounts"] = [{"name": "topology", "mountPath": TOPOLOGY_MOUNT, "readOnly": True}]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner, name, labels),
        "spec": {
            "replicas": dc.frontend_replicas,
            "selector": {"matchLabels": selector},
            # Never below capacity during a rollout: add one, then remove one.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "revisionHistoryLimit": 5,
            "template": {
                "metadata": {
                    "labels": {**labels, f"{LABEL_PREFIX}/revision": revision},
                    "annotations": _scrape_annotations(),
                },
                "spec": {
                    "affinity": _region_affinity(dc, selector, required=False),
                    **spec.placement.pod_fields(),
                    "securityContext": _pod_security(),
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": GRACE_SECONDS,
                    "containers": [container],
                    "volumes": [{"name": "topology", "configMap": {"name": topology_name(owner)}}],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, name, labels),
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    budget = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner, name, labels),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
    }
    return [deployment, service, budget]


def weight(dc: DatacenterSpec, env: Environment) -> int:
    return 0 if dc.name in env.drained else dc.weight


def topology(owner: Owner, spec: ImageServerSpec, env: Environment) -> dict[str, Any]:
    """The shard map in the shape `imageserver frontend --topology` reads."""
    return {
        "generation": owner.generation if env.topology_generation is None else env.topology_generation,
        "writeQuorum": spec.storage.write_quorum,
        "crossDatacenter": spec.storage.cross_datacenter,
        "datacenters": [
            {
                "name": dc.name,
                "weight": weight(dc, env),
                "drained": dc.name in env.drained,
                "shards": [
                    {
                        "name": f"s{i}",
                        "replicas": [
                            f"http://{storage_name(owner, dc.name, i)}-{r}.{storage_name(owner, dc.name, i)}"
                            f".{owner.namespace}.svc:{PORT}"
                            for r in range(spec.storage.replicas)
                        ],
                    }
                    for i in range(env.shards.get(dc.name, spec.shards))
                ],
            }
            for dc in spec.datacenters
        ],
    }


def shared_objects(owner: Owner, spec: ImageServerSpec, env: Environment) -> list[Manifest]:
    labels = _labels(owner, "imageserver")
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, topology_name(owner), labels),
        "data": {"topology.json": json.dumps(topology(owner, spec, env), indent=2, sort_keys=True) + "\n"},
    }
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(owner, f"{owner.name}-storage", labels),
        "spec": {
            "podSelector": {"matchLabels": _selector(owner, "storage")},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {"podSelector": {"matchLabels": _selector(owner, "frontend")}},
                        # Storage nodes deliver hints and rebalance to one another.
                        {"podSelector": {"matchLabels": _selector(owner, "storage")}},
                        # Prometheus scrapes /metrics on the same port, from its namespace only.
                        {
                            "namespaceSelector": {
                                "matchLabels": {
                                    "kubernetes.io/metadata.name": spec.monitoring.prometheus_namespace
                                }
                            },
                            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
                        },
                    ],
                    "ports": [{"protocol": "TCP", "port": PORT}],
                }
            ],
        },
    }
    datacenters = [dc.name for dc in spec.datacenters]
    rules = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, f"{owner.name}-slo-rules", labels),
        # Always here, so any Prometheus can load it as a rule file.
        "data": {"rules.yml": slo.rule_file(owner.namespace, owner.name, spec.slo, datacenters)},
    }
    objects = [config, rules, policy]
    if env.prometheus_rule:
        objects.append(
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "PrometheusRule",
                "metadata": _metadata(owner, f"{owner.name}-slo", labels),
                "spec": slo.rule_groups(owner.namespace, owner.name, spec.slo, datacenters),
            }
        )
    if env.gateway_api:
        parent: dict[str, Any] = {"name": spec.gateway_ref.name}
        if spec.gateway_ref.namespace:
            parent["namespace"] = spec.gateway_ref.namespace
        objects.append(
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": _metadata(owner, owner.name, labels),
                "spec": {
                    "parentRefs": [parent],
                    "rules": [
                        {
                            "matches": [{"path": {"type": "PathPrefix", "value": "/v1/images"}}],
                            "backendRefs": [
                                {"name": frontend_name(owner, dc.name), "port": 80, "weight": weight(dc, env)}
                                for dc in spec.datacenters
                            ],
                        }
                    ],
                },
            }
        )
    if env.service_monitor:
        objects.append(
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "ServiceMonitor",
                "metadata": _metadata(owner, owner.name, labels),
                "spec": {
                    "selector": {
                        "matchLabels": {
                            "app.kubernetes.io/instance": owner.name,
                            "app.kubernetes.io/name": "imageserver",
                        }
                    },
                    "endpoints": [
                        {
                            "port": "http",
                            "path": "/metrics",
                            "interval": "15s",
                            # The SLO rules select series by ImageServer and by this scrape's job,
                            # so no other scrape's series count (see slo.py).
                            "relabelings": [
                                {
                                    "sourceLabels": [
                                        "__meta_kubernetes_pod_label_app_kubernetes_io_instance"
                                    ],
                                    "targetLabel": "imageserver",
                                },
                                {
                                    "targetLabel": "job",
                                    "replacement": slo.job_label(owner.namespace, owner.name),
                                },
                            ],
                        }
                    ],
                },
            }
        )
    return objects


def render(owner: Owner, spec: ImageServerSpec, env: Environment) -> list[Manifest]:
    """Every object the ImageServer owns, in apply order (storage before frontends)."""
    objects = shared_objects(owner, spec, env)
    for dc in spec.datacenters:
        for shard in range(spec.shards):
            objects += storage_objects(owner, spec, dc, shard, env.revision(spec, dc.name))
    for dc in spec.datacenters:
        objects += frontend_objects(owner, spec, dc, env.revision(spec, dc.name))
    # Plain JSON trees that share nothing: callers may change one object without touching another.
    return list(json.loads(json.dumps(objects)))


def key(obj: Manifest) -> tuple[str, str, str]:
    """Identity of an object within its namespace."""
    return obj["apiVersion"], obj["kind"], obj["metadata"]["name"]
