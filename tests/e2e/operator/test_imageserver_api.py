"""The API server refuses bad ImageServers with messages a person understands, fills in
defaults, and teaches the API through `kubectl explain`."""

from __future__ import annotations

import json
from typing import Any

import pytest

from testbed.cluster import Cluster


def imageserver(name: str, **spec: Any) -> str:
    body = {"version": "1.0.0", "datacenters": [{"name": "dc-a"}], **spec}
    return json.dumps(
        {
            "apiVersion": "imageserver.dev/v1alpha1",
            "kind": "ImageServer",
            "metadata": {"name": name},
            "spec": body,
        }
    )


def test_a_minimal_imageserver_is_accepted_with_defaults(
    cluster: Cluster, imageserver_crd: str, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=imageserver("minimal"))
    stored = json.loads(cluster.kubectl("get", "imgs", "minimal", "-n", namespace, "-o", "json"))["spec"]
    assert stored["shards"] == 1
    assert stored["storage"] == {
        "replicas": 3,
        "writeQuorum": 2,
        "volumeSize": "10Gi",
        "storageClassName": "",
        "crossDatacenter": "async",
        "acceptUnauthenticatedWrites": False,
    }
    assert stored["monitoring"] == {"prometheusNamespace": "monitoring"}
    assert stored["datacenters"] == [{"name": "dc-a", "region": "", "frontendReplicas": 2, "weight": 100}]
    assert stored["slo"]["window"] == "30d"
    assert stored["remediation"]["mode"] == "auto"
    assert stored["variants"] == ["300x300", "1200x1200"]
    assert stored["rollout"] == {
        "waves": [],
        "bake": "5m",
        "maxBake": "30m",
        "minRequests": 200,
        "errorMarginPercent": 1.0,
        "slowMarginPercent": 2.0,
    }
    waves = {"waves": [["dc-a"], ["dc-b", "dc-c"]]}
    three = [{"name": n} for n in ("dc-a", "dc-b", "dc-c")]
    cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=imageserver("waves", datacenters=three, rollout=waves)
    )
    table = cluster.kubectl("get", "imgs", "-n", namespace)
    assert table.split("\n")[0].split() == [
        "NAME",
        "READY",
        "DATACENTERS",
        "SHARDS",
        "VERSION",
        "ROLLOUT",
        "BUDGET",
        "AGE",
    ]


def test_kubectl_explain_teaches_the_fields(cluster: Cluster, imageserver_crd: str) -> None:
    text = cluster.kubectl("explain", "imageserver.spec.storage.writeQuorum")
    assert "Replicas that must hold an upload before it is acknowledged (W ≤ R)." in text


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"shards": 0},
            "spec.shards: Invalid value: 0: spec.shards in body should be greater than or equal to 1",
        ),
        ({"shards": -3}, "spec.shards in body should be greater than or equal to 1"),
        (
            {"storage": {"replicas": 0, "writeQuorum": 0}},
            "spec.storage.replicas: Invalid value: 0: "
            "spec.storage.replicas in body should be greater than or equal to 1",
        ),
        (
            {"storage": {"replicas": 2, "writeQuorum": 3}},
            "spec.storage.writeQuorum: Invalid value: writeQuorum (W) must not be greater than replicas (R): "
            "a write could never be acknowledged",
        ),
        (
            {"datacenters": [{"name": "dc-a"}, {"name": "dc-a"}]},
            "spec.datacenters: Invalid value: datacenter names must be unique",
        ),
        (
            {"datacenters": [{"name": "dc-a", "frontendReplicas": 0}]},
            "spec.datacenters[0].frontendReplicas in body should be greater than or equal to 1",
        ),
        ({"datacenters": []}, "spec.datacenters in body should have at least 1 items"),
        (
            {"slo": {"availability": {"objective": 100}}},
            "spec.slo.availability.objective in body should be less than 100",
        ),
        (
            {"slo": {"availability": {"objective": 0}}},
            "spec.slo.availability.objective in body should be greater than 0",
        ),
        (
            {"slo": {"latency": {"thresholdSeconds": 0.3}}},
            "thresholdSeconds must be a latency bucket boundary",
        ),
        (
            {"remediation": {"mode": "yolo"}},
            'Unsupported value: "yolo": supported values: "auto", "dryRun", "off"',
        ),
        ({"replicaz": 3}, 'unknown field "spec.replicaz"'),
        (
            {"trustedProxies": ["10.0.0.0/8", "gateway.example"]},
            "spec.trustedProxies: Invalid value: trustedProxies must be IP addresses or CIDRs",
        ),
        ({"trustedProxies": ["::::"]}, "trustedProxies must be IP addresses or CIDRs"),
        ({"version": "1.0."}, "spec.version in body should match"),
        (
            {"datacenters": [{"name": "dc-a"}, {"name": "dc-b"}], "rollout": {"waves": [["dc-a"], ["dc-x"]]}},
            "spec.rollout.waves: Invalid value: every datacenter a rollout wave names must be one of "
            "spec.datacenters",
        ),
        (
            {"datacenters": [{"name": "dc-a"}, {"name": "dc-b"}], "rollout": {"waves": [["dc-a"], ["dc-a"]]}},
            "spec.rollout.waves: Invalid value: each datacenter must be in exactly one rollout wave",
        ),
        (
            {"datacenters": [{"name": "dc-a"}, {"name": "dc-b"}], "rollout": {"waves": [["dc-a"]]}},
            "each datacenter must be in exactly one rollout wave",
        ),
        ({"rollout": {"waves": [[]]}}, "spec.rollout.waves[0] in body should have at least 1 items"),
        ({"rollout": {"bake": "2d"}}, "bake must be at most 1d (24h); got a longer duration"),
        (
            {"rollout": {"minRequests": 1}},
            "spec.rollout.minRequests in body should be greater than or equal to 10",
        ),
        (
            {"placement": {"tolerations": [{"key": "dedicated", "operator": "Exists", "value": "images"}]}},
            "spec.placement.tolerations[0].value: Invalid value: "
            "a toleration with operator Exists matches any value: leave value empty",
        ),
        (
            {"placement": {"tolerations": [{"value": "images"}]}},
            "a toleration without a key must use operator Exists",
        ),
        (
            {"placement": {"tolerations": [{"key": "dedicated", "effect": "NoRun"}]}},
            'Unsupported value: "NoRun": supported values: "", "NoSchedule", "PreferNoSchedule", "NoExecute"',
        ),
        ({"placement": {"nodeSelector": {"pool": 3}}}, "spec.placement.nodeSelector.pool: Invalid value"),
    ],
)
def test_bad_specs_are_refused_with_a_clear_message(
    cluster: Cluster, imageserver_crd: str, namespace: str, spec: dict[str, Any], message: str
) -> None:
    refused = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=imageserver("bad", **spec), check=False
    )
    assert message in refused, refused


def test_shards_can_grow_but_never_shrink(cluster: Cluster, imageserver_crd: str, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=imageserver("grow", shards=3))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=imageserver("grow", shards=4))
    refused = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=imageserver("grow", shards=2), check=False
    )
    assert (
        "spec.shards: Invalid value: shards cannot be decreased: "
        "the images on the removed shards would be stranded" in refused
    ), refused
    assert cluster.kubectl("get", "imgs", "grow", "-n", namespace, "-o", "jsonpath={.spec.shards}") == "4"


def remediation(cooldown: str = "10m", rollback: str = "1h", healthy: str = "10m") -> dict[str, Any]:
    return {"cooldown": cooldown, "rollback": {"window": rollback}, "drain": {"healthyPeriod": healthy}}


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        (
            {"slo": {"window": "91d"}},
            "spec.slo.window",
            "window must be at least 1d and at most 90d; got a duration outside that range",
        ),
        (
            {"slo": {"window": "0d"}},
            "spec.slo.window",
            "window must be at least 1d and at most 90d; got a duration outside that range",
        ),
        (
            {"remediation": remediation(rollback="169h")},
            "spec.remediation.rollback.window",
            "window must be at most 7d (168h); got a longer duration",
        ),
        (
            {"remediation": remediation(rollback="604801s")},
            "spec.remediation.rollback.window",
            "window must be at most 7d (168h); got a longer duration",
        ),
        (
            {"remediation": remediation(healthy="1441m")},
            "spec.remediation.drain.healthyPeriod",
            "healthyPeriod must be at most 1d (24h); got a longer duration",
        ),
        (
            {"remediation": remediation(healthy="1000000000d")},
            "spec.remediation.drain.healthyPeriod",
            "healthyPeriod must be at most 1d (24h); got a longer duration",
        ),
        (
            {"remediation": remediation(cooldown="2d")},
            "spec.remediation.cooldown",
            "cooldown must be at most 1d (24h); got a longer duration",
        ),
        (
            {"remediation": remediation(cooldown="86401s")},
            "spec.remediation.cooldown",
            "cooldown must be at most 1d (24h); got a longer duration",
        ),
        ({"remediation": remediation(cooldown="9" * 16 + "s")}, "spec.remediation.cooldown", "Too long"),
    ],
)
def test_durations_past_their_range_are_refused_with_a_clear_message(
    cluster: Cluster, imageserver_crd: str, namespace: str, spec: dict[str, Any], path: str, message: str
) -> None:
    refused = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=imageserver("long", **spec), check=False
    )
    assert any(path in line and message in line for line in refused.splitlines()), refused


@pytest.mark.parametrize(
    ("window", "cooldown", "rollback", "healthy"),
    [
        ("90d", "1d", "7d", "1d"),
        ("1d", "24h", "168h", "24h"),
        ("30d", "1440m", "10080m", "1440m"),
        ("30d", "86400s", "604800s", "86400s"),
    ],
)
def test_durations_at_their_maximum_are_accepted(
    cluster: Cluster,
    imageserver_crd: str,
    namespace: str,
    window: str,
    cooldown: str,
    rollback: str,
    healthy: str,
) -> None:
    spec = {"slo": {"window": window}, "remediation": remediation(cooldown, rollback, healthy)}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=imageserver("longest", **spec))
    stored = json.loads(cluster.kubectl("get", "imgs", "longest", "-n", namespace, "-o", "json"))["spec"]
    assert stored["slo"]["window"] == window
    assert stored["remediation"]["cooldown"] == cooldown
    assert stored["remediation"]["rollback"]["window"] == rollback
    assert stored["remediation"]["drain"]["healthyPeriod"] == healthy


def test_a_new_version_is_refused_while_releases_are_frozen(
    cluster: Cluster, imageserver_crd: str, namespace: str
) -> None:
    """The budget policy's freeze is the API server's (a ValidatingAdmissionPolicy reading the
    status the SLO loop writes): a new version is refused with the budget left and how to make
    an exception; the same spec, other fields, and an exception with its reason are accepted."""
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=imageserver("frozen"))
    frozen = {
        "type": "ReleasesFrozen",
        "status": "True",
        "reason": "BudgetSpent",
        "message": "-12% of the 30d error budget left, below the 0% of spec.budgetPolicy",
        "lastTransitionTime": "2026-11-28T12:00:00Z",
    }
    status = json.dumps({"status": {"conditions": [frozen]}})
    cluster.kubectl(
        "patch", "imgs", "frozen", "-n", namespace, "--subresource=status", "--type=merge", "-p", status
    )

    def apply(**spec: Any) -> str:
        return cluster.kubectl(
            "apply", "-n", namespace, "-f", "-", input=imageserver("frozen", **spec), check=False
        )

    refused = apply(version="1.1.0")
    assert "releases of frozen are frozen: -12% of the 30d error budget left" in refused, refused
    assert "imageserver.dev/release-exception" in refused, refused
    assert "configured" in apply(variants=["300x300"])  # not a release: accepted
    body = json.loads(imageserver("frozen", version="1.1.0"))
    body["metadata"]["annotations"] = {
        "imageserver.dev/release-exception": "P0: CVE-2026-0001 in the decoder"
    }
    accepted = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body), check=False)
    assert "configured" in accepted, accepted
    assert (
        cluster.kubectl("get", "imgs", "frozen", "-n", namespace, "-o", "jsonpath={.spec.version}") == "1.1.0"
    )
