"""What only real pods prove: the chart's operator runs in the cluster as a container of the
project's image (its ServiceAccount, its security context), and the ImageServer it makes
runs as real containers that keep their volumes, take a new topology without a restart,
and answer `kubectl logs`, `exec` and `port-forward`; its storage NetworkPolicy, enforced by
kube-router, keeps a stranger pod out and lets its frontends in."""

from __future__ import annotations

import contextlib
import functools
import json
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from samples import jpeg

from testbed import nodes, tools
from testbed.cluster import Cluster
from testbed.images import app_version
from testbed.nodes import CHART_ON_REAL_NODES, LOCAL_CLASS, REAL_LABEL, REAL_PLACEMENT, REAL_TAINT
from testbed.processes import State

CHART = Path(__file__).resolve().parents[3] / "charts" / "imageserver-operator"

pytestmark = pytest.mark.usefixtures("real_nodes")


def wait(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(1)


def pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    listed = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json")
    return list(json.loads(listed)["items"])


def ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return not pod["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conditions
    )


@pytest.fixture
def operator(cluster: Cluster, imageserver_crd: str, namespace: str) -> Iterator[str]:
    """The chart installed onto the real nodes; the operator watches the release namespace."""
    name = f"op-{uuid.uuid4().hex[:6]}"
    cluster.helm("install", name, str(CHART), "-n", namespace, "--wait", "--timeout=3m", *CHART_ON_REAL_NODES)
    yield name
    cluster.helm("uninstall", name, "-n", namespace, "--ignore-not-found")


def imageserver(namespace: str, shards: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "imageserver.dev/v1alpha1",
        "kind": "ImageServer",
        "metadata": {"name": "photos", "namespace": namespace},
        "spec": {
            "version": app_version(),
            "datacenters": [{"name": "dc-a", "frontendReplicas": 2}],
            "shards": shards,
            # One real node per datacenter, and a storage replica per node.
            "storage": {
                "replicas": 1,
                "writeQuorum": 1,
                "storageClassName": LOCAL_CLASS,
                "volumeSize": "1Gi",
            },
            "resources": {
                "frontend": {"requests": {"cpu": "50m", "memory": "64Mi"}},
                "storage": {"requests": {"cpu": "20m", "memory": "64Mi"}},
            },
            "placement": REAL_PLACEMENT,
        },
    }


STORAGE = "app.kubernetes.io/instance=photos,app.kubernetes.io/component=storage"


def serve(cluster: Cluster, namespace: str) -> None:
    """The ImageServer applied, its frontends and storage ready."""
    cluster.kubectl("apply", "-f", "-", input=json.dumps(imageserver(namespace)))
    wait("two ready frontends", lambda: len(frontend_urls(cluster, namespace)) == 2, 180)
    wait("the storage pod ready", lambda: any(ready(p) for p in pods(cluster, namespace, STORAGE)), 120)


def upload(url: str, data: bytes) -> str:
    request = urllib.request.Request(f"{url}/v1/images", data=data, headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return str(json.loads(answer.read())["id"])


def upload_all(urls: list[str], datas: list[bytes]) -> dict[str, bytes]:
    """Each upload through the frontends in turn: id -> the bytes acknowledged."""
    return {upload(urls[i % len(urls)], data): data for i, data in enumerate(datas)}


def fetch(url: str, image_id: str) -> bytes:
    with urllib.request.urlopen(f"{url}/v1/images/{image_id}", timeout=10) as answer:
        return bytes(answer.read())


def frontend_urls(cluster: Cluster, namespace: str) -> list[str]:
    """Frontends by pod address: the host routes to the real nodes' pod network."""
    found = pods(cluster, namespace, "app.kubernetes.io/instance=photos,app.kubernetes.io/component=frontend")
    return [f"http://{p['status']['podIP']}:8080" for p in found if ready(p)]


def generation(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith("imageserver_topology_generation"):
                return float(line.split()[-1])
    return -1.0


def test_the_chart_runs_the_operator_in_cluster_and_its_imageserver_runs_as_real_containers(
    cluster: Cluster, namespace: str, operator: str
) -> None:
    # The operator: a container of the project's image on a real node, under the chart's
    # security context, talking to the API server with its own ServiceAccount's token.
    (op,) = pods(cluster, namespace, f"app.kubernetes.io/instance={operator}")
    assert op["spec"]["nodeName"].startswith("node-"), op["spec"]["nodeName"]
    security = op["spec"]["containers"][0]["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    who = cluster.kubectl("exec", "-n", namespace, op["metadata"]["name"], "--", "id", "-u").strip()
    assert who == "65532"
    touched = cluster.kubectl(
        "exec", "-n", namespace, op["metadata"]["name"], "--", "touch", "/probe", check=False
    )
    assert "Read-only file system" in touched

    # The ImageServer it reconciles: frontends and storage as real containers.
    serve(cluster, namespace)
    urls = frontend_urls(cluster, namespace)
    images = upload_all(urls, [jpeg(64, 48, seed=i) for i in range(6)])
    assert all(fetch(urls[0], i) == data and fetch(urls[1], i) == data for i, data in images.items())

    # logs, exec and port-forward reach the containers through the kubelet.
    front = pods(cluster, namespace, "app.kubernetes.io/component=frontend")[0]["metadata"]["name"]
    assert '"msg": "listening"' in cluster.kubectl("logs", "-n", namespace, front)
    (store,) = pods(cluster, namespace, STORAGE)
    files = cluster.kubectl(
        "exec", "-n", namespace, store["metadata"]["name"], "--", "find", "/data", "-type", "f"
    )
    assert len(files.split()) >= len(images), files
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local = probe.getsockname()[1]
    forward = subprocess.Popen(
        [
            str(cluster.binaries["kubectl"]),
            f"--kubeconfig={cluster.kubeconfig}",
            "port-forward",
            "-n",
            namespace,
            f"pod/{front}",
            f"{local}:8080",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        image_id = next(iter(images))
        got = wait("the port-forward", lambda: _try(lambda: fetch(f"http://127.0.0.1:{local}", image_id)), 20)
        assert got == images[image_id]
    finally:
        forward.terminate()
        forward.wait(10)

    # A storage pod deleted comes back on its node with its volume: nothing lost.
    before = store["metadata"]["uid"]
    cluster.kubectl("delete", "pod", "-n", namespace, store["metadata"]["name"], "--wait=true")
    wait(
        "the storage pod back",
        lambda: any(ready(p) and p["metadata"]["uid"] != before for p in pods(cluster, namespace, STORAGE)),
        120,
    )
    for image_id, data in images.items():
        assert wait("the image served again", functools.partial(_fetched, urls[0], image_id), 30) == data

    # A shard more. The operator names it in the frontends' map only once its storage pod is
    # ready (a volume bound, a container started), so no upload meets a shard still starting:
    # every upload through the scale-up is acknowledged (a 503 raises here). The new map
    # reaches the running frontends through the ConfigMap volume (the kubelet's atomic swap)
    # without a restart.
    running = {p["metadata"]["uid"] for p in pods(cluster, namespace, "app.kubernetes.io/component=frontend")}
    seen = {url: generation(url) for url in urls}
    cluster.kubectl("patch", "imgs", "photos", "-n", namespace, "--type=merge", "-p", '{"spec":{"shards":2}}')
    fresh: dict[str, bytes] = {}
    deadline = time.monotonic() + 180
    while not all(generation(url) > seen[url] for url in urls):
        assert time.monotonic() < deadline, "the frontends never got the map with the new shard"
        data = jpeg(64, 48, seed=100 + len(fresh))
        fresh[upload(urls[len(fresh) % len(urls)], data)] = data
        time.sleep(0.1)
    during = len(fresh)
    assert sum(ready(p) for p in pods(cluster, namespace, STORAGE)) == 2
    fresh |= upload_all(urls, [jpeg(64, 48, seed=100 + len(fresh) + i) for i in range(20)])
    print(f"scale-up: {during} uploads acknowledged while the new shard started, 20 after it joined")
    now = pods(cluster, namespace, "app.kubernetes.io/component=frontend")
    assert {p["metadata"]["uid"] for p in now} == running
    assert all(s["restartCount"] == 0 for p in now for s in p["status"]["containerStatuses"])
    for image_id, data in {**images, **fresh}.items():
        assert fetch(urls[0], image_id) == data and fetch(urls[1], image_id) == data


def _fetched(url: str, image_id: str) -> bytes | None:
    return _try(lambda: fetch(url, image_id))


def _try(read: Callable[[], bytes]) -> bytes | None:
    try:
        return read()
    except OSError:
        return None


# A client in the cluster: requests through the frontends' Service (kube-proxy's rules, the
# endpoints a rolling update changes) for a while; prints what it saw.
CLIENT = """
import json, sys, time, urllib.request, urllib.error
url, image, seconds, body = sys.argv[1], sys.argv[2], float(sys.argv[3]), bytes.fromhex(sys.argv[4])
seen, failures, n, end = {}, [], 0, time.monotonic() + seconds
while time.monotonic() < end:
    n += 1
    try:
        if n % 5:
            request = urllib.request.Request(f"{url}/v1/images/{image}")
        else:
            headers = {"Content-Type": "image/jpeg"}
            request = urllib.request.Request(f"{url}/v1/images", data=body, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()
            status = answer.status
    except urllib.error.HTTPError as error:
        status = error.code
    except OSError as error:
        status = 0
        failures.append(f"{time.time():.1f} {error}")
    seen[status] = seen.get(status, 0) + 1
    if status >= 500:
        failures.append(f"{time.time():.1f} HTTP {status}")
    time.sleep(0.05)
print(json.dumps({"statuses": seen, "failures": failures[:20]}))
"""


def test_a_rolling_update_of_the_frontends_under_traffic_fails_no_request(
    cluster: Cluster, namespace: str, operator: str
) -> None:
    serve(cluster, namespace)
    image_id = upload(frontend_urls(cluster, namespace)[0], jpeg(64, 48, seed=7))
    before = {p["metadata"]["uid"] for p in pods(cluster, namespace, "app.kubernetes.io/component=frontend")}
    seconds = 75
    client = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "client", "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {REAL_LABEL: "real"},
            "tolerations": [{"key": REAL_TAINT, "operator": "Exists"}],
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
            "containers": [
                {
                    "name": "client",
                    "image": f"ghcr.io/imageserver-sre/imageserver:{app_version()}",
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", CLIENT],
                    "args": [
                        "http://photos-frontend-dc-a",
                        image_id,
                        str(seconds),
                        jpeg(32, 24, seed=8).hex(),
                    ],
                }
            ],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(client))
    wait(
        "the client running",
        lambda: (
            json.loads(cluster.kubectl("get", "pod", "client", "-n", namespace, "-o", "json"))["status"].get(
                "phase"
            )
            == "Running"
        ),
        60,
    )
    time.sleep(10)  # traffic before the update
    # A new frontend template (another allowlisted variant): a rolling update, one surge pod
    # at a time, each old one draining as kube-proxy lets go of it.
    cluster.kubectl(
        "patch",
        "imgs",
        "photos",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"variants":["300x300","640x640"]}}',
    )

    def replaced() -> bool:
        now = pods(cluster, namespace, "app.kubernetes.io/component=frontend")
        return (
            len(now) == 2
            and not ({p["metadata"]["uid"] for p in now} & before)
            and all(ready(p) for p in now)
        )

    wait("both frontends replaced", replaced, seconds)
    phase = json.loads(cluster.kubectl("get", "pod", "client", "-n", namespace, "-o", "json"))["status"][
        "phase"
    ]
    assert phase == "Running", "the update outlasted the traffic: it proved nothing"

    def finished() -> str | None:
        pod = json.loads(cluster.kubectl("get", "pod", "client", "-n", namespace, "-o", "json"))
        return (
            str(pod["status"].get("phase")) if pod["status"].get("phase") in ("Succeeded", "Failed") else None
        )

    assert wait("the client done", finished, seconds + 30) == "Succeeded"
    report = json.loads(cluster.kubectl("logs", "client", "-n", namespace).strip().splitlines()[-1])
    statuses = {int(k): v for k, v in report["statuses"].items()}
    assert sum(statuses.values()) > 400, report
    assert set(statuses) <= {200, 201}, report


# -- the storage NetworkPolicy, enforced by kube-router ----------------------------------------

CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()\n"
    "    print('connected')\n"
    "except OSError as error:\n"
    "    print('refused:', error)\n"
)


def connects(cluster: Cluster, namespace: str, pod: str, address: str, port: int) -> bool:
    said = cluster.kubectl(
        "exec", "-n", namespace, pod, "--", "python3", "-c", CONNECT, address, str(port), check=False
    )
    assert "connected" in said or "refused:" in said, said
    return "connected" in said


def stranger(cluster: Cluster, namespace: str, name: str, node: str, image: str) -> str:
    """A pod of nobody's: the project's image (it has Python to try a connection), on `node`."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "stranger"}},
        "spec": {
            "nodeName": node,
            "tolerations": [{"key": REAL_TAINT, "operator": "Exists"}],
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {"name": "stranger", "image": image, "imagePullPolicy": "Never", "command": ["sleep", "3600"]}
            ],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    return name


@pytest.fixture
def enforced_policies(cluster: Cluster) -> Callable[[], contextlib.AbstractContextManager[None]]:
    """NetworkPolicies enforced on the real nodes (kube-router), while inside."""
    state = State.load(cluster.state)
    assert state is not None
    binary = tools.build(tools.tool("kube-router")) / "kube-router"
    return functools.partial(nodes.network_policies, state, binary)


@pytest.mark.disruptive  # the nodes' firewall is everyone's while it enforces
def test_the_storage_network_policy_lets_frontends_in_and_keeps_a_stranger_out(
    cluster: Cluster,
    namespace: str,
    operator: str,
    enforced_policies: Callable[[], contextlib.AbstractContextManager[None]],
) -> None:
    serve(cluster, namespace)
    (store,) = [p for p in pods(cluster, namespace, STORAGE) if ready(p)]
    address = store["status"]["podIP"]
    port = store["spec"]["containers"][0]["ports"][0]["containerPort"]
    image = store["spec"]["containers"][0]["image"]
    front = pods(cluster, namespace, "app.kubernetes.io/component=frontend")[0]["metadata"]["name"]
    # Beside the storage pod (one bridge: bridged traffic) and on another node (routed).
    others = sorted({"node-dc-a", "node-dc-b"} - {store["spec"]["nodeName"]}) or ["node-dc-b"]
    strangers = [
        stranger(cluster, namespace, "stranger-beside", store["spec"]["nodeName"], image),
        stranger(cluster, namespace, "stranger-elsewhere", others[0], image),
    ]
    wait(
        "the strangers running",
        lambda: (
            all(p["status"].get("phase") == "Running" for p in pods(cluster, namespace, "app=stranger"))
            and len(pods(cluster, namespace, "app=stranger")) == 2
        ),
        120,
    )
    # Without an engine the policy is only words: the test can tell the difference.
    assert all(connects(cluster, namespace, s, address, port) for s in strangers)

    with enforced_policies():
        for name in strangers:
            wait(f"{name} kept out", lambda: not connects(cluster, namespace, name, address, port), 60)  # noqa: B023
        assert connects(cluster, namespace, front, address, port)
        # The service still works through the frontends, which the policy lets in.
        urls = frontend_urls(cluster, namespace)
        images = upload_all(urls, [jpeg(64, 48, seed=40 + i) for i in range(3)])
        assert all(fetch(urls[0], i) == data for i, data in images.items())
        assert all(not connects(cluster, namespace, s, address, port) for s in strangers)

    # Stopped, it leaves nothing behind: the strangers reach storage again.
    assert all(connects(cluster, namespace, s, address, port) for s in strangers)
