"""The chart as Helm and the API server see it: lint, server-side dry run of every variant,
install, upgrade, uninstall."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from testbed.cluster import Cluster
from testbed.prometheus import promtool

CHART = Path(__file__).resolve().parents[3] / "charts" / "imageserver-operator"
VARIANTS = {
    "defaults": [],
    "cluster-wide, two replicas, SLO loop, Slack": [
        "--set=watch.clusterWide=true",
        "--set=replicaCount=2",
        "--set=prometheus.url=http://prometheus.monitoring:9090",
        "--set=slack.tokenSecrets={imageserver-slack}",
    ],
    "listed namespaces, NetworkPolicy": [
        "--set=watch.namespaces={NAMESPACE,default}",
        "--set=networkPolicy.enabled=true",
    ],
}


def test_helm_lint_is_clean(cluster: Cluster) -> None:
    out = cluster.helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in out and "[WARNING]" not in out and "[ERROR]" not in out


def test_values_outside_the_schema_are_refused(cluster: Cluster) -> None:
    with pytest.raises(RuntimeError, match="replicaCount"):
        cluster.helm("template", "x", str(CHART), "--set=replicaCount=0")
    with pytest.raises(RuntimeError, match="additional properties 'colour' not allowed"):
        cluster.helm("template", "x", str(CHART), "--set=colour=blue")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_rendered_chart_is_accepted_by_the_api_server(
    cluster: Cluster, imageserver_crd: str, namespace: str, variant: str
) -> None:
    args = [arg.replace("NAMESPACE", namespace) for arg in VARIANTS[variant]]
    rendered = cluster.helm("template", "op", str(CHART), "-n", namespace, *args)
    out = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
    kinds = {line.split("/")[0] for line in out.splitlines()}
    assert {"deployment.apps", "serviceaccount", "role.rbac.authorization.k8s.io"} & kinds


def test_the_operators_own_alerts_are_valid_rules(cluster: Cluster, tmp_path: Path) -> None:
    """PrometheusRule/ServiceMonitor need the Prometheus Operator's CRDs, which the test bed
    does not install: their rules are checked with promtool instead."""
    rendered = cluster.helm(
        "template",
        "op",
        str(CHART),
        "--set=metrics.prometheusRule.enabled=true",
        "--set=metrics.serviceMonitor.enabled=true",
    )
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    rule = next(d for d in documents if d["kind"] == "PrometheusRule")
    assert any(d["kind"] == "ServiceMonitor" for d in documents)
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_install_upgrade_uninstall(
    cluster: Cluster, imageserver_crd: str, namespace: str, release: Callable[..., str]
) -> None:
    name = release()
    deployment = f"deployment/{name}-imageserver-operator"
    status = json.loads(cluster.kubectl("get", deployment, "-n", namespace, "-o", "json"))["status"]
    assert status.get("readyReplicas") == 1  # Ready on a KWOK node

    chart = str(CHART)
    cluster.helm("upgrade", name, chart, "-n", namespace, "--reuse-values", "--set=replicaCount=2", "--wait")
    status = json.loads(cluster.kubectl("get", deployment, "-n", namespace, "-o", "json"))["status"]
    assert status.get("readyReplicas") == 2

    cluster.helm("uninstall", name, "-n", namespace)
    assert cluster.kubectl("get", deployment, "-n", namespace, "--ignore-not-found") == ""
    # Helm keeps CRDs (deleting them would delete every ImageServer).
    cluster.kubectl("get", "crd", "imageservers.imageserver.dev", "postmortems.imageserver.dev")
