"""ServiceAccount tokens authenticate, and RBAC allows what a Role grants and nothing else."""

from __future__ import annotations

import json
import subprocess

from testbed.cluster import Cluster


def as_token(cluster: Cluster, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    ca = cluster.state / "pki" / "ca.crt"
    return subprocess.run(
        [
            str(cluster.binaries["kubectl"]),
            "--kubeconfig=/dev/null",
            f"--server={cluster.server}",
            f"--certificate-authority={ca}",
            f"--token={token}",
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def test_token_authenticates_and_rbac_denies_what_the_role_does_not_grant(
    cluster: Cluster, namespace: str
) -> None:
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
    }
    cluster.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(role))
    cluster.kubectl(
        "create",
        "rolebinding",
        "reader",
        "-n",
        namespace,
        "--role=pod-reader",
        f"--serviceaccount={namespace}:reader",
    )
    token = cluster.kubectl("create", "token", "reader", "-n", namespace, "--duration=10m").strip()

    whoami = as_token(cluster, token, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
    assert whoami.stdout == f"system:serviceaccount:{namespace}:reader", whoami.stderr

    allowed = as_token(cluster, token, "get", "pods", "-n", namespace)
    assert allowed.returncode == 0, allowed.stderr

    denied = as_token(cluster, token, "get", "secrets", "-n", namespace)
    assert denied.returncode != 0
    assert (
        f'secrets is forbidden: User "system:serviceaccount:{namespace}:reader" '
        f'cannot list resource "secrets"'
    ) in denied.stderr
    other = as_token(cluster, token, "get", "pods", "-n", "default")
    assert "forbidden" in other.stderr

    forged = as_token(cluster, token[:-4] + "AAAA", "get", "pods", "-n", namespace)
    assert "Unauthorized" in forged.stderr or "must be logged in" in forged.stderr
