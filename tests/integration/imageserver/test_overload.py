"""Under attack the server stays inside its memory budget and fair to everyone else: stalled
uploads, decompression bombs and clients that hang up are refused or cut off with a 4xx or a
503 that says when to come back, and a well-behaved client keeps being served quickly."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attacks
import pytest
import requests
import samples
from attacks import ATTACKER, BUDGET, GOOD, PeakRss, StalledUpload, WellBehaved, bomb, post
from clusters import metric
from servers import Processes, Server

REFUSALS = {408, 413, 429, 503}


@pytest.fixture
def guarded(imageserver: Processes, tmp_path: Path) -> Server:
    return imageserver.start(*attacks.guarded(tmp_path / "data", body_idle=3))


def resident(server: Server) -> int:
    for line in Path(f"/proc/{server.managed.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def shed(server: Server) -> Counter[str]:
    text = requests.get(f"{server.url}/metrics", timeout=5).text
    reasons: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("imageserver_shed_requests_total{"):
            reasons[line.split('reason="', 1)[1].split('"', 1)[0]] = int(float(line.rsplit(" ", 1)[1]))
    return reasons


def test_the_attack_mix_stays_in_budget_and_a_good_client_is_served(guarded: Server) -> None:
    server = guarded
    rss = PeakRss(server.managed.pid)
    baseline = resident(server)
    good = WellBehaved(server.url)
    client = threading.Thread(target=good.run)
    client.start()
    bombs = [f"{ATTACKER[:-2]}{i}" for i in range(10, 26)]  # 16 more attackers, one bomb each
    try:
        with ThreadPoolExecutor(80) as pool:
            stalled = list(pool.map(lambda _: StalledUpload(server.port, ATTACKER), range(50)))
            exploding = [pool.submit(post, server.port, bomb(), who) for who in bombs[:8]]
            leaving = [pool.submit(post, server.port, bomb(), who, hang_up_after=0.3) for who in bombs[8:]]
            answers = [f.result() for f in exploding + leaving]
            time.sleep(2)  # the good client goes on while the stalled bodies are held
            stalled_answers = [upload.answer(wait=10) for upload in stalled]
    finally:
        good.stop.set()
        client.join()
        peak = rss.stop()
    for upload in stalled:
        upload.close()

    assert peak < BUDGET, f"RSS reached {peak >> 20} MiB"
    # And the memory comes back: freed buffers are returned, not kept at the peak.
    after = resident(server)
    assert after < baseline + (96 << 20), f"RSS {after >> 20} MiB after the attack, {baseline >> 20} before"
    assert good.latencies and set(good.statuses) <= {200, 201}, good.statuses
    assert good.p99() < 1.0, f"the good client's p99 was {good.p99():.2f} s"
    # Bombs are refused from their header: their decode would not fit what one client may use.
    assert [a.status for a in answers[:8]] == [413] * 8
    assert all(a.status in (413, None) for a in answers[8:])  # 413 before the hang-up, or none
    # Stalled bodies: most refused at once for the client's share, the rest cut off.
    assert set(stalled_answers) <= REFUSALS, Counter(stalled_answers)
    assert Counter(stalled_answers)[408] >= 1 and Counter(stalled_answers)[429] >= 40
    reasons = shed(server)
    assert reasons["memory_exceeds_capacity"] >= 8 and reasons["body_timeout"] >= 1, reasons
    # Once the attack stops, everything is back to normal.
    assert (
        requests.post(f"{server.url}/v1/images", data=samples.jpeg(640, 480, seed=99), timeout=10).status_code
        == 201
    )
    assert metric(server, 'imageserver_admission_in_use{gate="memory"}') < 64 << 20


def test_refusals_under_load_say_when_to_come_back(guarded: Server) -> None:
    """A client at its limit of requests in flight gets 429 with Retry-After; a 413 has none
    (it will never fit); other clients are served meanwhile."""
    stalled = [StalledUpload(guarded.port, ATTACKER, size=1 << 20, missing=100) for _ in range(8)]
    try:
        refused = post(guarded.port, samples.jpeg(64, 48), ATTACKER)
        assert refused.status == 429 and refused.retry_after
        too_big = post(guarded.port, bomb(), GOOD)
        assert too_big.status == 413 and not too_big.retry_after
        assert post(guarded.port, samples.jpeg(64, 48, seed=5), GOOD).status == 201  # others are fine
    finally:
        for upload in stalled:
            upload.close()


def test_clients_that_hang_up_while_queued_never_cost_a_render(
    imageserver: Processes, tmp_path: Path
) -> None:
    """One render thread, busy with a heavy image; six clients queue heavy images behind it
    and hang up. Their work is dropped from the queue, never started: a small upload that
    comes next waits only for the render already running."""
    server = imageserver.start(
        "serve", "--data", str(tmp_path / "data"), "--render-threads", "1", "--trusted-proxies", "127.0.0.1"
    )
    heavy = bomb(5000, 5000)  # 1-2 s of rendering here
    with ThreadPoolExecutor(8) as pool:
        running = pool.submit(post, server.port, heavy, "192.0.2.1")
        time.sleep(0.15)
        leavers = [
            pool.submit(post, server.port, heavy, f"192.0.2.{i}", hang_up_after=0.3) for i in range(2, 8)
        ]
        assert [f.result().status for f in leavers] == [None] * 6  # no answer by 0.3 s: they left
        small = post(server.port, samples.jpeg(320, 240, seed=1), GOOD)
        assert running.result().status == 201
    heavy_took = running.result().seconds
    assert small.status == 201
    # It waits for the render already running, not for six more: each would take as long.
    assert small.seconds < heavy_took + 1.0, f"{small.seconds:.1f} s behind a {heavy_took:.1f} s render"
    # Two renders ran: the heavy one and the small one; none for a client that had left.
    assert metric(server, 'imageserver_renders_total{kind="upload"}') == 2
    assert metric(server, 'imageserver_admission_queue_depth{gate="render"}') == 0


def test_a_body_that_stops_coming_is_cut_off_with_408(guarded: Server) -> None:
    started = time.monotonic()
    stalled = StalledUpload(guarded.port, GOOD, size=1 << 20, missing=1000)
    try:
        assert stalled.answer(wait=15) == 408
    finally:
        stalled.close()
    assert 2.5 < time.monotonic() - started < 10
    assert metric(guarded, 'imageserver_admission_in_use{gate="memory"}') == 0


def test_bodies_that_trickle_hold_only_what_they_sent_and_are_cut_at_the_average_rate(
    imageserver: Processes, tmp_path: Path
) -> None:
    """Slowloris: many clients declare 20 MB and send a few bytes now and then. They must
    not hold 40 MB each of the budget (everyone else would get 503), and after the grace
    period they must keep the minimum average rate."""
    server = imageserver.start(
        "serve",
        "--data",
        str(tmp_path / "data"),
        "--trusted-proxies",
        "127.0.0.1",
        "--body-grace",
        "1",
        "--body-min-rate",
        str(64 << 10),
        "--body-idle-timeout",
        "30",
    )
    tricklers = [
        StalledUpload(server.port, f"192.0.2.{i}", size=20 << 20, missing=(20 << 20) - 8) for i in range(16)
    ]
    try:
        held = metric(server, 'imageserver_admission_in_use{gate="memory"}')
        assert held <= 16 * 2 * (4 << 20), f"{held / (1 << 20):.0f} MiB held for 128 bytes"
        assert post(server.port, samples.jpeg(640, 480, seed=8), GOOD).status == 201
        started = time.monotonic()
        answers = [t.answer(wait=10) for t in tricklers]
        assert answers == [408] * 16
        assert time.monotonic() - started < 5  # cut at about the grace, not after 330 s
    finally:
        for trickler in tricklers:
            trickler.close()
    assert metric(server, 'imageserver_admission_in_use{gate="memory"}') == 0


def test_a_memory_limit_too_small_for_one_upload_is_refused_at_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "imageserver",
            "serve",
            "--data",
            str(tmp_path),
            "--memory-limit",
            str(139 << 20),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "one client may use 50%" in done.stderr and "--max-upload-bytes needs 50 MiB" in done.stderr
