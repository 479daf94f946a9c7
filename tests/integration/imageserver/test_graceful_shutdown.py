"""SIGTERM is a handover, not a cut: readiness fails at once, the process serves through its
drain delay, finishes what is in flight, then exits. A rolling restart of every process
under steady traffic, behind a readiness-aware balancer, costs clients nothing."""

from __future__ import annotations

import json
import random
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import requests
import samples
from clusters import start_cluster
from links import Balancer
from servers import Processes

DRAIN = {"IMAGESERVER_DRAIN_DELAY": "1"}
QUICK_DRAIN = {"IMAGESERVER_DRAIN_DELAY": "0.5"}  # the balancer checks readiness every 0.1 s


def test_sigterm_fails_readiness_first_and_finishes_the_upload_in_flight(
    imageserver: Processes, tmp_path: Path
) -> None:
    server = imageserver.start("serve", "--data", str(tmp_path / "data"), env=DRAIN)
    image = samples.jpeg(640, 480, seed=7)
    popen = server.managed.popen
    assert popen is not None
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as upload:
        upload.sendall(
            b"POST /v1/images HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\n"
            + f"Content-Length: {len(image)}\r\n\r\n".encode()
            + image[: len(image) // 2]
        )
        time.sleep(0.2)
        signalled = time.monotonic()
        popen.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        ready = requests.get(f"{server.url}/readyz", timeout=2)
        assert ready.status_code == 503 and "shutting down" in ready.text
        assert requests.get(f"{server.url}/healthz", timeout=2).status_code == 200  # still serving
        time.sleep(1.2)  # past the drain delay: the listener is closed, the upload is not
        upload.sendall(image[len(image) // 2 :])
        answer = upload.recv(65536)
    assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
    assert b"Connection: close" in answer
    assert popen.wait(10) == 0
    assert time.monotonic() - signalled >= 1.0
    image_id = json.loads(answer.split(b"\r\n\r\n", 1)[1])["id"]
    imageserver.restart(server)
    assert requests.get(f"{server.url}/v1/images/{image_id}", timeout=5).content == image


def test_a_rolling_restart_of_every_process_under_load_costs_clients_nothing(
    imageserver: Processes, tmp_path: Path
) -> None:
    cluster = start_cluster(
        imageserver, tmp_path, ("dc-a",), shards=1, replicas=3, quorum=2, storage_env=QUICK_DRAIN
    )
    second = imageserver.start(
        "frontend", "--topology", str(cluster.topology), "--datacenter", "dc-a", env=QUICK_DRAIN
    )
    first = cluster.frontends["dc-a"]
    first.kill()  # back with a drain delay, as pods are
    first.env.update(QUICK_DRAIN)
    imageserver.restart(first)
    frontends = [first, second]
    balancer = Balancer([f.port for f in frontends])
    acknowledged: dict[str, bytes] = {}
    failures: Counter[str] = Counter()
    answered: Counter[int] = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def uploader(worker: int) -> None:
        session = requests.Session()
        seed = worker * 100_000
        while not stop.is_set():
            image = samples.jpeg(160, 120, seed=seed)
            seed += 1
            try:
                answer = session.post(f"{balancer.url}/v1/images", data=image, timeout=30)
            except requests.RequestException as why:
                failures[type(why).__name__] += 1
                continue
            with lock:
                answered[answer.status_code] += 1
                if answer.status_code == 201:
                    acknowledged[answer.json()["id"]] = image

    def reader() -> None:
        session = requests.Session()
        while not stop.is_set():
            with lock:
                ids = list(acknowledged)
            if not ids:
                time.sleep(0.05)
                continue
            image_id = random.choice(ids)
            suffix = random.choice(("", "?w=300&h=300"))
            try:
                answer = session.get(f"{balancer.url}/v1/images/{image_id}{suffix}", timeout=30)
            except requests.RequestException as why:
                failures[type(why).__name__] += 1
                continue
            with lock:
                answered[answer.status_code] += 1

    threads = [threading.Thread(target=uploader, args=(i,)) for i in range(2)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1)
        for server in [*cluster.storage.values(), *frontends]:
            server.terminate()
            imageserver.restart(server)
            time.sleep(0.5)
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        balancer.close()
    print(f"answers {dict(answered)}, client failures {dict(failures)}, balancer refused {balancer.refused}")
    assert not failures, failures
    assert balancer.refused == 0
    assert set(answered) == {200, 201}, answered
    assert len(acknowledged) >= 50
    session = requests.Session()
    for image_id, image in acknowledged.items():
        assert session.get(f"{second.url}/v1/images/{image_id}", timeout=10).content == image
