"""Prometheus (Debian's package) scrapes real local targets and answers PromQL; promtool
checks and unit-tests rule files."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from testbed.processes import free_port
from testbed.prometheus import Prometheus, promtool

DATA = Path(__file__).resolve().parents[2] / "data" / "testbed"


@pytest.fixture
def target() -> Iterator[tuple[int, Counter]]:
    registry = CollectorRegistry()
    counter = Counter("probe_requests", "Requests seen by the probe target.", registry=registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield port, counter
    server.shutdown()
    thread.join()


def test_prometheus_scrapes_a_local_target_and_answers_promql(
    prometheus: Callable[..., Prometheus], target: tuple[int, Counter]
) -> None:
    port, counter = target
    counter.inc(42)
    server = prometheus([{"job_name": "probe", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}])
    up = server.wait_for('up{job="probe"} == 1')
    assert [s["metric"]["instance"] for s in up] == [f"127.0.0.1:{port}"]
    total = server.wait_for('probe_requests_total{job="probe"}')
    assert float(total[0]["value"][1]) == 42.0


def test_promtool_checks_and_unit_tests_rules(tmp_path: Path) -> None:
    for name in ("sample_rules.yml", "sample_rules_test.yml"):
        shutil.copy(DATA / name, tmp_path / name)
    checked = promtool("check", "rules", "sample_rules.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 2 rules found" in checked.stdout
    tested = promtool("test", "rules", "sample_rules_test.yml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_promtool_test_rules_fails_when_an_expectation_is_wrong(tmp_path: Path) -> None:
    shutil.copy(DATA / "sample_rules.yml", tmp_path / "sample_rules.yml")
    wrong = (DATA / "sample_rules_test.yml").read_text().replace("value: 0.5", "value: 0.25")
    (tmp_path / "wrong_test.yml").write_text(wrong)
    tested = promtool("test", "rules", "wrong_test.yml", cwd=tmp_path)
    assert tested.returncode != 0
    assert "FAILED" in tested.stdout + tested.stderr
