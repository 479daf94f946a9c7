"""The chart's RBAC is enough and no more, shown with the ServiceAccount's own token.

Enough: the operator, run with those credentials (not admin), reconciles every example to
Ready and rolls back a bad rollout. No more: it cannot list Secrets, read one not named in
the values, touch another namespace, or delete namespaces.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from testbed.cluster import Cluster
from testbed.mission import Mission
from testbed.operators import OperatorProcesses

ROOT = Path(__file__).resolve().parents[3]
# A refusal as the clients write it: kubernetes' ApiException "(403)\nReason: Forbidden",
# kopf's APIForbiddenError, the Status body's "code": 403 and its "... is forbidden: User".
# Not any "403" (an Audit-Id header's UUID holds one now and then).
REFUSED = re.compile(r"Forbidden|is forbidden|\(403\)|['\"]code['\"]:\s*403\b")


def refusals(log: str) -> list[str]:
    return [line for line in log.splitlines() if REFUSED.search(line)]


def can_i(cluster: Cluster, kubeconfig: Path, *args: str) -> bool:
    done = subprocess.run(
        [str(cluster.binaries["kubectl"]), f"--kubeconfig={kubeconfig}", "auth", "can-i", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() == "yes"


@pytest.fixture
def operator_kubeconfig(
    cluster: Cluster, namespace: str, release: Callable[..., str], tmp_path: Path
) -> Path:
    name = release("--set=slack.tokenSecrets={slack,imageserver-slack}")
    return cluster.service_account_kubeconfig(
        namespace, f"{name}-imageserver-operator", tmp_path / "operator.kubeconfig"
    )


def test_no_more_than_it_needs(cluster: Cluster, namespace: str, operator_kubeconfig: Path) -> None:
    other = "kube-system"
    for secret in ("slack", "imageserver-slack", "other"):
        cluster.kubectl("create", "secret", "generic", secret, "-n", namespace, "--from-literal=token=x")
    allowed = {
        ("get", "secret/slack"): True,
        ("get", "secret/imageserver-slack"): True,
        ("get", "secret/other"): False,
        ("list", "secrets"): False,
        ("watch", "secrets"): False,
        # The storage token: created once, never read back or changed.
        ("create", "secrets"): True,
        ("patch", "secrets"): False,
        ("update", "secrets"): False,
        ("patch", "imageservers.imageserver.dev"): True,
        ("delete", "imageservers.imageserver.dev"): False,
        ("patch", "deployments.apps"): True,
        ("create", "pods"): False,
        ("create", "rolebindings.rbac.authorization.k8s.io"): False,
    }
    for (verb, what), expected in allowed.items():
        assert can_i(cluster, operator_kubeconfig, verb, what, "-n", namespace) is expected, (verb, what)
    for verb, what in (
        ("list", "imageservers.imageserver.dev"),
        ("patch", "deployments.apps"),
        ("get", "secret/slack"),
    ):
        assert not can_i(cluster, operator_kubeconfig, verb, what, "-n", other), (verb, what, other)
    assert not can_i(cluster, operator_kubeconfig, "delete", "namespaces")
    assert not can_i(cluster, operator_kubeconfig, "list", "customresourcedefinitions.apiextensions.k8s.io")
    assert can_i(cluster, operator_kubeconfig, "get", "crd/httproutes.gateway.networking.k8s.io")

    # Real calls, not just the authorizer's opinion.
    kubectl = [str(cluster.binaries["kubectl"]), f"--kubeconfig={operator_kubeconfig}"]
    for args in (["get", "secrets", "-n", namespace], ["get", "secret", "other", "-n", namespace]):
        done = subprocess.run([*kubectl, *args], capture_output=True, text=True, check=False)
        assert done.returncode != 0 and "Forbidden" in done.stderr, done.stderr
    done = subprocess.run(
        [*kubectl, "get", "secret", "slack", "-n", namespace, "-o", "name"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "secret/slack"


def test_enough_to_reconcile_every_example(
    cluster: Cluster, imageserver_crd: str, namespace: str, operator_kubeconfig: Path, tmp_path: Path
) -> None:
    cluster.kubectl(
        "create", "secret", "generic", "imageserver-slack", "-n", namespace, "--from-literal=token=xoxb-test"
    )
    operators = OperatorProcesses(cluster, namespace, tmp_path / "operators", operator_kubeconfig)
    operators.start()
    try:
        names = []
        for example in sorted((ROOT / "examples").glob("*.yaml")):
            cluster.kubectl("apply", "-n", namespace, "-f", str(example))
            names.append(yaml.safe_load(example.read_text())["metadata"]["name"])
        for name in names:
            cluster.kubectl(
                "wait", "--for=condition=Ready", "--timeout=120s", f"imgs/{name}", "-n", namespace
            )
        imgs = json.loads(cluster.kubectl("get", "imgs", "-n", namespace, "-o", "json"))["items"]
        assert all(i["status"]["observedGeneration"] == i["metadata"]["generation"] for i in imgs)
    finally:
        operators.stop_all()
    log = (tmp_path / "operators" / "logs" / "operator-1.log").read_text()
    assert not refusals(log), log[-2000:]


def test_enough_to_roll_back(mission: Callable[..., Mission], operator_kubeconfig: Path) -> None:
    spec = {
        "version": "1.0.0",
        "datacenters": [{"name": "dc-a", "frontendReplicas": 1}, {"name": "dc-b", "frontendReplicas": 1}],
        "storage": {"replicas": 1, "writeQuorum": 1},
        "notifications": {"slack": {"channel": "#oncall", "tokenSecretRef": {"name": "slack"}}},
    }
    one = mission(spec, faults={"1.1.0": 0.5}, operator_kubeconfig=operator_kubeconfig)
    # As test_bad_rollout and any real rollout: the operator has watched the healthy service
    # before the new revision comes. Applied the moment the operator restarted, it had no
    # baseline for 1.0.0 and, with 1.0.0 frontends failing through 1.1.0 storage mid-rollout,
    # paged instead of rolling back (the in-memory baseline, issue 13).
    one.holds(
        "a healthy service watched first", lambda: "imageserver.dev/incident" not in one.annotations(), 10
    )
    one.apply(version="1.1.0")
    one.until("rolled back", lambda: one.rolled_back("1.0.0"), 120)
    one.until("told in Slack", lambda: bool(one.messages("Rolled back 1.0.0")), 30)  # read the token
    assert len(one.postmortems()) == 1
    assert "RolledBack" in one.reasons()
    for log in one.operators.state.directory.glob("logs/*.log"):
        assert not refusals(log.read_text()), log.read_text()[-2000:]
