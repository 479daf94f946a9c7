"""The generated SLO rules, checked and unit-tested by promtool (Debian's Prometheus)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from imageserver_operator.api.models import SLOSpec
from imageserver_operator.core import slo
from testbed.prometheus import promtool

JOB = 'job="prod/photos"'  # what the ServiceMonitor sets on every scrape of prod/photos
LABELS = (
    f'namespace="prod", imageserver="photos", {JOB}, datacenter="dc-a", revision="1.0.0", route="original"'
)
PAGE = {
    "severity": "page",
    "slo": "availability",
    "imageserver": "photos",
    "namespace": "prod",
    "job": "prod/photos",
}
SUMMARY = {"runbook_url": "runbooks/slo-burn-page.md"}


def expected(sli: str, what: str, objective: str, budget: str) -> dict[str, Any]:
    return {
        "exp_labels": {**PAGE, "slo": sli},
        "exp_annotations": {
            **SUMMARY,
            "summary": f"prod/photos is burning its {sli} error budget too fast",
            "description": f"{what} exceed the {objective}% objective's budget "
            f"({budget} of requests over 30d).",
        },
    }


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yml"
    path.write_text(slo.rule_file("prod", "photos", SLOSpec(), ["dc-a", "dc-b"]))
    return path


def run_test(tmp_path: Path, rules: Path, tests: list[dict[str, Any]]) -> None:
    spec = {"rule_files": [rules.name], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    result = promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def requests(code: str, per_minute: float, minutes: int, extra: str = "") -> dict[str, str]:
    return {
        "series": f'imageserver_http_requests_total{{{LABELS}, code="{code}"{extra}}}',
        "values": f"0+{per_minute:g}x{minutes}",
    }


def test_the_generated_rules_pass_promtool_check(rules: Path) -> None:
    checked = promtool("check", "rules", str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    groups = yaml.safe_load(rules.read_text())["groups"]
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    assert {a["alert"] for a in alerts} == {
        "ImageServerAvailabilityBurnPage",
        "ImageServerAvailabilityBurnTicket",
        "ImageServerLatencyBurnPage",
        "ImageServerLatencyBurnTicket",
        "ImageServerStorageFilling",
        "ImageServerStorageFull",
        "ImageServerReplicationLag",
        "ImageServerDatacenterSilent",
    }
    for alert in alerts:
        runbook = Path(__file__).parents[3] / alert["annotations"]["runbook_url"]
        assert runbook.is_file(), f"{alert['alert']}: no runbook at {runbook}"
    burns = [a for a in alerts if "Burn" in a["alert"]]
    assert all(a["annotations"]["runbook_url"].startswith("runbooks/slo-burn-") for a in burns)
    # 99.9 %: page at 14.4 x 0.001 over 1h and 5m, or 6 x 0.001 over 6h and 30m.
    page = next(a for a in alerts if a["alert"] == "ImageServerAvailabilityBurnPage")
    assert "availability_error_ratio:rate1h" in page["expr"] and "> 0.0144" in page["expr"]
    assert "availability_error_ratio:rate6h" in page["expr"] and "> 0.006" in page["expr"]


def test_a_total_outage_pages_within_two_minutes(tmp_path: Path, rules: Path) -> None:
    run_test(
        tmp_path,
        rules,
        [
            {
                "interval": "1m",
                "input_series": [requests("500", 600, 30)],
                "alert_rule_test": [
                    {"alertname": "ImageServerAvailabilityBurnPage", "eval_time": "0m", "exp_alerts": []},
                    {
                        "alertname": "ImageServerAvailabilityBurnPage",
                        "eval_time": "2m",
                        "exp_alerts": [expected("availability", "failing requests", "99.9", "0.001")],
                    },
                ],
            }
        ],
    )


def test_a_half_budget_burn_never_pages_nor_tickets(tmp_path: Path, rules: Path) -> None:
    minutes = 12 * 60
    checks: list[dict[str, Any]] = [
        {"alertname": name, "eval_time": at, "exp_alerts": []}
        for name in ("ImageServerAvailabilityBurnPage", "ImageServerAvailabilityBurnTicket")
        for at in ("10m", "1h", "6h", "12h")
    ]
    run_test(
        tmp_path,
        rules,
        [
            {
                "interval": "1m",
                # 0.5 x the 0.1 % budget: 0.05 % of 1000 requests a minute fail.
                "input_series": [requests("200", 999.5, minutes), requests("500", 0.5, minutes)],
                "alert_rule_test": checks,
                "promql_expr_test": [
                    {
                        "expr": 'imageserver:availability_error_ratio:rate1h{imageserver="photos"}',
                        "eval_time": "6h",
                        "exp_samples": [
                            {
                                "labels": 'imageserver:availability_error_ratio:rate1h{imageserver="photos", '
                                f'namespace="prod", {JOB}}}',
                                "value": 0.0005,
                            }
                        ],
                    }
                ],
            }
        ],
    )


def test_slow_requests_page_on_the_latency_slo(tmp_path: Path, rules: Path) -> None:
    bucket = "imageserver_http_request_duration_seconds_bucket"
    run_test(
        tmp_path,
        rules,
        [
            {
                "interval": "1m",
                "input_series": [
                    requests("200", 600, 30),
                    {"series": f'{bucket}{{{LABELS}, le="0.5"}}', "values": "0+0x30"},
                    {"series": f'{bucket}{{{LABELS}, le="+Inf"}}', "values": "0+600x30"},
                ],
                "alert_rule_test": [
                    {
                        "alertname": "ImageServerLatencyBurnPage",
                        "eval_time": "3m",
                        "exp_alerts": [expected("latency", "requests slower than 0.5s", "99", "0.01")],
                    },
                    {"alertname": "ImageServerAvailabilityBurnPage", "eval_time": "3m", "exp_alerts": []},
                ],
            }
        ],
    )


def test_burn_is_attributed_to_datacenter_and_revision(tmp_path: Path, rules: Path) -> None:
    by_revision = "imageserver:availability_error_ratio_by_revision:rate5m"
    by_datacenter = "imageserver:availability_error_ratio_by_datacenter:rate5m"
    bad = LABELS.replace('revision="1.0.0"', 'revision="1.1.0"').replace("dc-a", "dc-b")
    mine = f'imageserver="photos", namespace="prod", {JOB}'

    def sample(name: str, labels: str, value: float) -> dict[str, Any]:
        return {"labels": f"{name}{{{labels}}}", "value": value}

    run_test(
        tmp_path,
        rules,
        [
            {
                "interval": "1m",
                "input_series": [
                    requests("200", 600, 30),
                    {"series": f'imageserver_http_requests_total{{{bad}, code="500"}}', "values": "0+300x30"},
                    {"series": f'imageserver_http_requests_total{{{bad}, code="200"}}', "values": "0+300x30"},
                ],
                "promql_expr_test": [
                    {
                        "expr": f'{by_revision}{{imageserver="photos"}}',
                        "eval_time": "10m",
                        "exp_samples": [
                            sample(by_revision, f'{mine}, revision="1.0.0"', 0),
                            sample(by_revision, f'{mine}, revision="1.1.0"', 0.5),
                        ],
                    },
                    {
                        "expr": f'{by_datacenter}{{datacenter="dc-b"}}',
                        "eval_time": "10m",
                        "exp_samples": [
                            sample(by_datacenter, f'datacenter="dc-b", {mine}', 0.5),
                        ],
                    },
                ],
            }
        ],
    )


def test_an_hour_of_total_outage_spends_about_139_percent_of_a_30_day_budget(
    tmp_path: Path, rules: Path
) -> None:
    """1 h of 100 % errors at a steady rate is 3600 s / (0.001 x 30 d) = 1.39 budgets; slots of
    the window without data count as no errors, so a young service is not judged by its start."""
    window_ratio = "imageserver:availability_error_ratio:slo_window"
    run_test(
        tmp_path,
        rules,
        [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": f'imageserver_http_requests_total{{{LABELS}, code="500"}}',
                        "values": "0+600x60 36000x120",
                    },
                    {
                        "series": f'imageserver_http_requests_total{{{LABELS}, code="200"}}',
                        "values": "0x60 0+600x120",
                    },
                ],
                "promql_expr_test": [
                    {
                        "expr": f"({window_ratio} > bool 0.0013) * ({window_ratio} < bool 0.0015)",
                        "eval_time": "3h",
                        "exp_samples": [
                            {"labels": f'{{namespace="prod", imageserver="photos", {JOB}}}', "value": 1}
                        ],
                    }
                ],
            }
        ],
    )


def test_refusals_of_clients_spend_no_budget_but_shedding_does(tmp_path: Path, rules: Path) -> None:
    """429 (a client past its share), 408 (a body that never came), 413 (too big) and 400 are
    the client's doing: a flood of them pages nobody. A 503 from load shedding is a user who
    got no image: it counts, so an overload shows in the SLO (and imageserver_shed_requests_total
    tells it apart from a bad build)."""
    minutes = 30
    clients = [requests(code, 500, minutes) for code in ("429", "408", "413", "400")]
    checks: list[dict[str, Any]] = [
        {"alertname": "ImageServerAvailabilityBurnPage", "eval_time": at, "exp_alerts": []}
        for at in ("5m", "15m", "30m")
    ]
    shedding = [requests("200", 900, minutes), requests("503", 100, minutes)]
    run_test(
        tmp_path,
        rules,
        [
            {
                "interval": "1m",
                "input_series": [requests("200", 100, minutes), *clients],
                "alert_rule_test": checks,
            },
            {
                "interval": "1m",
                "input_series": shedding,
                "alert_rule_test": [
                    {
                        "alertname": "ImageServerAvailabilityBurnPage",
                        "eval_time": "10m",
                        "exp_alerts": [expected("availability", "failing requests", "99.9", "0.001")],
                    }
                ],
            },
        ],
    )


STORAGE = f'namespace="prod", imageserver="photos", {JOB}, datacenter="dc-a", pod="photos-storage-dc-a-s0-0"'


def test_a_filling_volume_raises_a_ticket_at_80_percent_and_pages_at_90(tmp_path: Path, rules: Path) -> None:
    gib = 1 << 30
    # 10 GiB volume, filling by 1 % of it a minute from 70 % used: 80 % at 10m, 90 % at 20m.
    free = {"series": f"imageserver_storage_free_bytes{{{STORAGE}}}", "values": f"{3 * gib}-{gib // 10}x40"}
    size = {"series": f"imageserver_storage_capacity_bytes{{{STORAGE}}}", "values": f"{10 * gib}x40"}
    pod = "photos-storage-dc-a-s0-0"
    labels = {
        "imageserver": "photos",
        "namespace": "prod",
        "job": "prod/photos",
        "datacenter": "dc-a",
        "pod": pod,
    }

    def fired(severity: str, over: str, used: str) -> dict[str, Any]:
        return {
            "exp_labels": {**labels, "severity": severity},
            "exp_annotations": {
                "summary": f"prod/photos: a storage volume is over {over} full",
                "description": f"{pod} in dc-a has used {used} of its volume; at its reserve it answers 507 "
                "and stops being ready, and the shard's other replicas take the writes.",
                "runbook_url": "runbooks/storage-full.md",
            },
        }

    run_test(
        tmp_path,
        rules,
        [
            {
                "interval": "1m",
                "input_series": [free, size],
                "alert_rule_test": [
                    {"alertname": "ImageServerStorageFilling", "eval_time": "20m", "exp_alerts": []},
                    {
                        "alertname": "ImageServerStorageFilling",
                        "eval_time": "26m",
                        "exp_alerts": [fired("ticket", "80%", "96%")],
                    },
                    {"alertname": "ImageServerStorageFull", "eval_time": "22m", "exp_alerts": []},
                    {
                        "alertname": "ImageServerStorageFull",
                        "eval_time": "27m",
                        "exp_alerts": [fired("page", "90%", "97%")],
                    },
                ],
            }
        ],
    )


def test_copies_owed_for_over_ten_minutes_raise_a_ticket(tmp_path: Path, rules: Path) -> None:
    # dc-b went dark at 0: the oldest owed copy ages by a minute each minute; two replicas.
    lag = [
        {
            "series": f"imageserver_replication_lag_seconds{{{STORAGE.replace('s0-0', f's0-{r}')}}}",
            "values": "0+60x30",
        }
        for r in (0, 1)
    ]
    run_test(
        tmp_path,
        rules,
        [
            {
                "interval": "1m",
                "input_series": lag,
                "alert_rule_test": [
                    {"alertname": "ImageServerReplicationLag", "eval_time": "14m", "exp_alerts": []},
                    {
                        "alertname": "ImageServerReplicationLag",
                        "eval_time": "17m",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "ticket",
                                    "imageserver": "photos",
                                    "namespace": "prod",
                                    "job": "prod/photos",
                                    "datacenter": "dc-a",
                                },
                                "exp_annotations": {
                                    "summary": "prod/photos: copies owed to other datacenters are late",
                                    "description": "Storage nodes in dc-a have owed a copy to another "
                                    "datacenter for 17m 0s; until it arrives, an image uploaded there "
                                    "exists in one datacenter only.",
                                    "runbook_url": "runbooks/replication-lag.md",
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    )


def silent(datacenter: str) -> dict[str, Any]:
    return {
        "exp_labels": {
            "severity": "page",
            "imageserver": "photos",
            "namespace": "prod",
            "job": "prod/photos",
            "datacenter": datacenter,
            "role": "frontend",
        },
        "exp_annotations": {
            "summary": f"prod/photos: no frontend in {datacenter} is heard from",
            "description": f"Prometheus has scraped no frontend of datacenter {datacenter} for 5m: "
            "they are down or not scraped. Requests routed there count in no SLO, and the "
            "operator cannot judge that datacenter, let alone drain it.",
            "runbook_url": "runbooks/datacenter-silent.md",
        },
    }


def build_info(labels: str, datacenter: str, role: str, values: str) -> dict[str, str]:
    return {
        "series": f'imageserver_build_info{{{labels}, datacenter="{datacenter}", revision="1.0.0", '
        f'role="{role}"}}',
        "values": values,
    }


def test_a_datacenter_whose_frontends_are_all_unheard_pages(tmp_path: Path, rules: Path) -> None:
    """dc-a's frontend is scraped all along, though it serves nothing (idle is not silent);
    dc-b's frontend dies at 10m while its storage node is still scraped."""
    mine = f'namespace="prod", imageserver="photos", {JOB}'
    run_test(
        tmp_path,
        rules,
        [
            {
                "interval": "1m",
                "input_series": [
                    build_info(mine, "dc-a", "frontend", "1x30"),
                    build_info(mine, "dc-b", "frontend", "1x9 stale"),
                    build_info(mine, "dc-b", "storage", "1x30"),
                ],
                # What the operator reads to tell a quiet datacenter from a silent one.
                "promql_expr_test": [
                    {
                        "expr": "imageserver:frontends:count",
                        "eval_time": "5m",
                        "exp_samples": [
                            {
                                "labels": f'imageserver:frontends:count{{{mine}, datacenter="{dc}"}}',
                                "value": 1,
                            }
                            for dc in ("dc-a", "dc-b")
                        ],
                    },
                    {
                        "expr": "imageserver:frontends:count",
                        "eval_time": "16m",
                        "exp_samples": [
                            {
                                "labels": f'imageserver:frontends:count{{{mine}, datacenter="dc-a"}}',
                                "value": 1,
                            }
                        ],
                    },
                ],
                "alert_rule_test": [
                    {"alertname": "ImageServerDatacenterSilent", "eval_time": at, "exp_alerts": []}
                    for at in ("5m", "10m", "14m")
                ]
                + [
                    {
                        "alertname": "ImageServerDatacenterSilent",
                        "eval_time": "16m",
                        "exp_alerts": [silent("dc-b")],
                    }
                ],
            }
        ],
    )


# The victim is prod/photos. A series from another scrape in its namespace, or from another
# namespace (which prometheus-operator's enforcedNamespaceLabel makes of any other tenant's,
# whatever `job` that tenant claims), with the same names and otherwise the victim's labels.
SPOOFS = {
    "another job": 'namespace="prod", imageserver="photos", job="prod/other"',
    "another namespace": 'namespace="evil", imageserver="photos", job="prod/photos"',
}


@pytest.mark.parametrize("spoof", SPOOFS.values(), ids=SPOOFS.keys())
def test_series_from_another_scrape_change_nothing(tmp_path: Path, rules: Path, spoof: str) -> None:
    """Every request failing, a full volume, copies owed for an hour, a resharding backlog and
    live frontends in both datacenters, all spoofed: no ratio, no alert, no silence."""
    storage = f'{spoof}, datacenter="dc-a", pod="photos-storage-dc-a-s0-0"'
    forged = [
        {
            "series": f'imageserver_http_requests_total{{{spoof}, datacenter="dc-a", revision="1.0.0", '
            'route="original", code="500"}',
            "values": "0+600x30",
        },
        {"series": f"imageserver_storage_free_bytes{{{storage}}}", "values": "0x30"},
        {"series": f"imageserver_storage_capacity_bytes{{{storage}}}", "values": f"{10 << 30}x30"},
        {"series": f"imageserver_replication_lag_seconds{{{storage}}}", "values": "3600+60x30"},
        {"series": f"imageserver_rebalance_remaining{{{storage}}}", "values": "50x30"},
        build_info(spoof, "dc-a", "frontend", "1x30"),
        build_info(spoof, "dc-b", "frontend", "1x30"),
    ]
    quiet: list[dict[str, Any]] = [
        {"alertname": name, "eval_time": "20m", "exp_alerts": []}
        for name in (
            "ImageServerAvailabilityBurnPage",
            "ImageServerAvailabilityBurnTicket",
            "ImageServerStorageFilling",
            "ImageServerStorageFull",
            "ImageServerReplicationLag",
        )
    ]
    mine = f'namespace="prod", imageserver="photos", {JOB}'
    ratio = "imageserver:availability_error_ratio:rate5m"
    run_test(
        tmp_path,
        rules,
        [
            {
                # The victim has no series at all: nothing is recorded for it, and both its
                # datacenters are silent.
                "interval": "1m",
                "input_series": forged,
                "alert_rule_test": [
                    *quiet,
                    {
                        "alertname": "ImageServerDatacenterSilent",
                        "eval_time": "20m",
                        "exp_alerts": [silent("dc-a"), silent("dc-b")],
                    },
                ],
                "promql_expr_test": [
                    {"expr": '{__name__=~"imageserver:.+"}', "eval_time": "20m", "exp_samples": []}
                ],
            },
            {
                # The victim serves without a failure: its ratio stays 0.
                "interval": "1m",
                "input_series": [
                    *forged,
                    requests("200", 600, 30),
                    build_info(mine, "dc-a", "frontend", "1x30"),
                    build_info(mine, "dc-b", "frontend", "1x30"),
                ],
                "alert_rule_test": [
                    *quiet,
                    {"alertname": "ImageServerDatacenterSilent", "eval_time": "20m", "exp_alerts": []},
                ],
                "promql_expr_test": [
                    {
                        "expr": ratio,
                        "eval_time": "20m",
                        "exp_samples": [{"labels": f"{ratio}{{{mine}}}", "value": 0}],
                    },
                    {"expr": slo.REBALANCE_REMAINING, "eval_time": "20m", "exp_samples": []},
                ],
            },
        ],
    )


def test_the_operator_reads_what_a_resharding_still_has_to_move_from_the_rules(
    tmp_path: Path, rules: Path
) -> None:
    """Summed over the ImageServer's storage nodes, from its own scrape only."""
    mine = f'namespace="prod", imageserver="photos", {JOB}'
    nodes = [
        {
            "series": f"imageserver_rebalance_remaining{{{STORAGE.replace('s0-0', f's0-{r}')}}}",
            "values": f"{10 * (r + 1)}x10",
        }
        for r in (0, 1)
    ]
    run_test(
        tmp_path,
        rules,
        [
            {
                "interval": "1m",
                "input_series": nodes,
                "promql_expr_test": [
                    {
                        "expr": slo.REBALANCE_REMAINING,
                        "eval_time": "5m",
                        "exp_samples": [
                            {
                                "labels": f"{slo.REBALANCE_REMAINING}{{{mine}}}",
                                "value": 30,
                            }
                        ],
                    }
                ],
            }
        ],
    )


@pytest.mark.parametrize("window", ["1d", "3d", "7d", "28d", "90d"])
def test_every_budget_window_gives_rules_promtool_accepts(tmp_path: Path, window: str) -> None:
    path = tmp_path / "rules.yml"
    path.write_text(slo.rule_file("prod", "photos", SLOSpec(window=window), ["dc-a"]))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_three_day_slo_pages_on_a_total_outage_within_its_scaled_windows(tmp_path: Path) -> None:
    """A 3-day budget window: "5m" covers 30 s and "1h" 6 min, so a total outage pages once
    the 6-minute window holds enough of it: after about 30 s instead of two minutes."""
    path = tmp_path / "rules.yml"
    path.write_text(slo.rule_file("prod", "photos", SLOSpec(window="3d"), ["dc-a"]))
    page = expected("availability", "failing requests", "99.9", "0.001")
    page["exp_annotations"]["description"] = page["exp_annotations"]["description"].replace("30d", "3d")
    spec = {
        "rule_files": [path.name],
        "evaluation_interval": "10s",
        "tests": [
            {
                "interval": "10s",
                "input_series": [requests("500", 100, 60)],
                "alert_rule_test": [
                    {"alertname": "ImageServerAvailabilityBurnPage", "eval_time": "0s", "exp_alerts": []},
                    {
                        "alertname": "ImageServerAvailabilityBurnPage",
                        "eval_time": "40s",
                        "exp_alerts": [page],
                    },
                ],
            }
        ],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    result = promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
