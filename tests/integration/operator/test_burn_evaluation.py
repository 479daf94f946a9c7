"""Burn rates seen through real Prometheus: generated rules, a real imageserver failing on
purpose, and the evaluation's two queries."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import requests
from servers import Processes

from imageserver_operator.adapters.prom import Prometheus
from imageserver_operator.api.models import SLOSpec
from imageserver_operator.core import slo
from imageserver_operator.core.evaluation import Budgets
from imageserver_operator.core.policy import page_level
from testbed.prometheus import Prometheus as PrometheusServer

KEY = ("prod", "photos")
BUDGETS = {KEY: Budgets(availability=0.001, latency=0.01), ("prod", "quiet"): Budgets(0.001, 0.01)}


def test_a_failing_revision_burns_at_page_level_and_is_attributed(
    imageserver: Processes, prometheus: Callable[..., PrometheusServer], tmp_path: Path
) -> None:
    good = imageserver.start(
        "serve",
        "--data",
        str(tmp_path / "a"),
        env={"IMAGESERVER_DATACENTER": "dc-a", "IMAGESERVER_REVISION": "1.0.0"},
    )
    bad = imageserver.start(
        "serve",
        "--data",
        str(tmp_path / "b"),
        env={
            "IMAGESERVER_DATACENTER": "dc-b",
            "IMAGESERVER_REVISION": "1.1.0",
            "IMAGESERVER_FAULT_ERROR_RATIO": "0.5",
        },
    )
    rules = tmp_path / "rules.yml"
    rules.write_text(slo.rule_file("prod", "photos", SLOSpec()))
    labels = {"namespace": "prod", "imageserver": "photos", "job": slo.job_label("prod", "photos")}
    server = prometheus(
        [
            {
                "job_name": "imageserver",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{good.port}", f"127.0.0.1:{bad.port}"], "labels": labels}
                ],
            }
        ],
        [rules],
    )

    # The bad revision fails half its requests within 3 over any run (faults follow the ratio,
    # they are not drawn), so what is left is Prometheus' extrapolation at the edges of a young series:
    # up to about one scrape interval out of the window's span. Reading only after min_rounds
    # scrapes keeps that under 1/min_rounds, so the burn is 500 ± 15 %, well inside the bounds.
    rounds, min_rounds = 0, 8
    deadline = time.monotonic() + 60
    observed = None
    while time.monotonic() < deadline:
        rounds += 1
        for target in (good, bad):
            for _ in range(20):
                requests.get(f"{target.url}/v1/images/{'0' * 64}", timeout=5)  # 404s, or injected 500s
        client = Prometheus(server.url)
        observed = client.observe(BUDGETS)
        assert client.queries == 2  # fixed, however many ImageServers
        revisions, datacenters = observed[KEY].by_revision, observed[KEY].by_datacenter
        # Every series the assertions read (rules land one evaluation apart).
        if (
            rounds >= min_rounds
            and page_level(revisions.get("1.1.0", {}))
            and "1.0.0" in revisions
            and page_level(datacenters.get("dc-b", {}))
        ):
            break
        time.sleep(1)
    assert observed is not None
    photos = observed[KEY]
    assert photos.reachable and photos.requests_per_second > 0
    assert page_level(photos.by_revision["1.1.0"]) and page_level(photos.by_datacenter["dc-b"])
    assert not page_level(photos.by_revision["1.0.0"]) and photos.by_revision["1.0.0"]["5m"] == 0
    assert 300 < photos.by_revision["1.1.0"]["5m"] < 700  # about half the requests fail: 500x the budget
    assert observed[("prod", "quiet")].service == {}  # no series: no data, never a guess


def test_prometheus_down_means_unreachable_not_healthy() -> None:
    observed = Prometheus("http://127.0.0.1:9", timeout=1).observe(BUDGETS)
    assert all(not o.reachable for o in observed.values())
