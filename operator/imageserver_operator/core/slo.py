"""SLOs as Prometheus rules, the SRE Workbook way: multiwindow, multi-burn-rate.

For one ImageServer: recording rules of request, error and slow rates by datacenter and
revision over every window the alerts use, error ratios for the whole service, per
datacenter and per revision, four alerts (availability and latency, each as a page and
a ticket), an alert per datacenter of the spec that no frontend is heard from, and the
storage rules (what a resharding still has to move; volumes filling up, copies owed to
other datacenters piling up). Burn rate = error ratio / error budget, where the budget is
1 - objective.

| severity | long window | short window | burn rate | budget spent when it fires |
|----------|-------------|--------------|-----------|----------------------------|
| page     | 1h          | 5m           | 14.4      | 2 % in an hour             |
| page     | 6h          | 30m          | 6         | 5 % in six hours           |
| ticket   | 1d          | 2h           | 3         | 10 % in a day              |
| ticket   | 3d          | 6h           | 1         | 10 % in three days         |

The table is the Workbook's for a 30-day budget window. For another `slo.window`, each
window keeps its share of the budget window (the factors, and the share of budget spent when
an alert fires, stay as they are): a 3-day SLO evaluates "5m" over 30 s and "1h" over 6 min.
Windows keep their 30-day names everywhere (rules, evaluation, policy); `ranges` says what
each covers. No range is shorter than `MIN_RANGE`, for rate() to see two scrapes.

Every selector, over raw and recorded series alike, names the ImageServer three ways:
`namespace`, `imageserver` and `job="<namespace>/<name>"` (`job_label`). The rendered
ServiceMonitor sets that `job` on every scrape of the ImageServer's pods, and relabels the
pods' app.kubernetes.io/instance label into `imageserver`. Scoping by job means only series
from that scrape count: another workload in the namespace exposing the same metric names
and labels, or a second scrape of the same pods (their prometheus.io/* annotations invite
one), cannot change a ratio, fire an alert or silence one. Recorded series keep `job`, so
rules reading them are scoped the same way.

This holds only as far as Prometheus guarantees the labels: `namespace` by
prometheus-operator's enforcedNamespaceLabel (it overrides whatever a ServiceMonitor's
relabelings or a target's exposition say, so a tenant cannot claim another's namespace),
and `job` by scrapes not honoring exposed labels (tenant ServiceMonitors must not set
honorLabels, or prometheus-operator's overrideHonorLabels must be on), or a scrape could
forge it. Anyone allowed to write a ServiceMonitor in the ImageServer's own namespace can
still set this `job`: the namespace is the trust boundary.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from imageserver_operator.api import durations
from imageserver_operator.api.models import SLOSpec

WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
SHORT = WINDOWS[0]  # what serves users now: when an incident ends, whether a datacenter recovered
TABLE_PERIOD = datetime.timedelta(days=30)  # the budget window the table's windows are for
MIN_RANGE = datetime.timedelta(seconds=30)
DATA_ROUTES = "upload|original|variant"
REQUESTS = "imageserver_http_requests_total"
BUCKETS = "imageserver_http_request_duration_seconds_bucket"
GROUPINGS = {"": (), "_by_datacenter": ("datacenter",), "_by_revision": ("revision",)}
DETAIL = ("datacenter", "revision")
RUNBOOK_BASE = "runbooks"
INFO = "imageserver_build_info"  # 1 from every process scraped, labelled with role and datacenter
REBALANCE_REMAINING = "imageserver:imageserver_rebalance_remaining:sum"
FRONTENDS = "imageserver:frontends:count"  # frontends scraped, per datacenter: heard, or silent


@dataclass(frozen=True)
class BurnAlert:
    severity: str
    long: str
    short: str
    factor: float


BURN_ALERTS = (
    BurnAlert("page", "1h", "5m", 14.4),
    BurnAlert("page", "6h", "30m", 6.0),
    BurnAlert("ticket", "1d", "2h", 3.0),
    BurnAlert("ticket", "3d", "6h", 1.0),
)
SLIS = {"availability": "errors", "latency": "slow"}


def _promql(span: datetime.timedelta) -> str:
    seconds = int(span.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _period(slo_window: str) -> datetime.timedelta:
    """The budget window, within the schema's bounds even for an object stored before them."""
    period = durations.parse(slo_window, maximum=durations.SLO_WINDOW_MAX)
    return max(period, durations.SLO_WINDOW_MIN)


def ranges(slo_window: str) -> dict[str, str]:
    """What each named window covers for this budget window, as PromQL ranges: the 30-day
    table's own for 30 days, the same share of any other."""
    period = _period(slo_window)
    covered = {}
    for window in WINDOWS:
        share = durations.parse(window) * (period / TABLE_PERIOD)
        covered[window] = _promql(max(datetime.timedelta(seconds=round(share.total_seconds())), MIN_RANGE))
    return covered


def over(burn: Mapping[str, float], severity: str) -> bool:
    """Whether burn rates (window name → multiple of the budget) fire an alert of this
    severity: over the factor on both windows of one of its rows. The policy's page and the
    Prometheus alerts are the same table."""
    return any(
        burn.get(a.long, 0.0) > a.factor and burn.get(a.short, 0.0) > a.factor
        for a in BURN_ALERTS
        if a.severity == severity
    )


def budget(objective_percent: float) -> float:
    """The error budget as a ratio: 99.9 % → 0.001."""
    return round(1 - objective_percent / 100, 10)


def job_label(namespace: str, name: str) -> str:
    """The `job` label of every scrape of this ImageServer's pods. Unambiguous: neither a
    namespace nor an object name can contain "/"."""
    return f"{namespace}/{name}"


def _scope(namespace: str, name: str) -> str:
    """The matchers that confine a selector to this ImageServer's own scrapes."""
    return f'namespace="{namespace}", imageserver="{name}", job="{job_label(namespace, name)}"'


def _by(*labels: str) -> str:
    return ", ".join(("namespace", "imageserver", "job", *labels))


def _recording(namespace: str, name: str, threshold: float, slo_window: str) -> list[dict[str, Any]]:
    match = f'{_scope(namespace, name)}, route=~"{DATA_ROUTES}"'
    le = f"{threshold:g}" if threshold != int(threshold) else f"{threshold:.1f}"
    rules = []
    for window, span in ranges(slo_window).items():
        rules += [
            {
                "record": f"imageserver:requests:rate{window}",
                "expr": f"sum by ({_by(*DETAIL)}) (rate({REQUESTS}{{{match}}}[{span}]))",
            },
            # "or 0 x requests": a revision with no 5xx at all has ratio 0, not "no data".
            {
                "record": f"imageserver:errors:rate{window}",
                "expr": f'sum by ({_by(*DETAIL)}) (rate({REQUESTS}{{{match}, code=~"5.."}}[{span}]))'
                f" or 0 * sum by ({_by(*DETAIL)}) (rate({REQUESTS}{{{match}}}[{span}]))",
            },
            # Slow = every request minus those faster than the threshold (the bucket at le).
            {
                "record": f"imageserver:slow:rate{window}",
                "expr": f'sum by ({_by(*DETAIL)}) (rate({BUCKETS}{{{match}, le="+Inf"}}[{span}]))'
                f' - sum by ({_by(*DETAIL)}) (rate({BUCKETS}{{{match}, le="{le}"}}[{span}]))',
            },
        ]
        mine = f"{{{_scope(namespace, name)}}}"
        for suffix, labels in GROUPINGS.items():
            for sli, bad in SLIS.items():
                rules.append(
                    {
                        "record": f"imageserver:{sli}_error_ratio{suffix}:rate{window}",
                        "expr": f"sum by ({_by(*labels)}) (imageserver:{bad}:rate{window}{mine})"
                        f" / sum by ({_by(*labels)}) (imageserver:requests:rate{window}{mine})",
                    }
                )
    # Frontends heard from per datacenter, traffic or not: a datacenter with none is silent.
    rules.append(
        {
            "record": FRONTENDS,
            "expr": f'count by ({_by("datacenter")}) ({INFO}{{{_scope(namespace, name)}, role="frontend"}})',
        }
    )
    # What serves users now, per datacenter and revision, on the short window: says when an
    # incident is over, while the long windows still remember it for hours.
    for sli, bad in SLIS.items():
        rules.append(
            {
                "record": f"imageserver:{sli}_error_ratio_by_datacenter_revision:rate5m",
                "expr": f"sum by ({_by(*DETAIL)}) (imageserver:{bad}:rate5m{mine})"
                f" / sum by ({_by(*DETAIL)}) (imageserver:requests:rate5m{mine})",
            }
        )
    return rules


def _budget_window(namespace: str, name: str, slo_window: str) -> list[dict[str, Any]]:
    """The budget window's error ratio: the 5m ratio sampled every 5m (the range that name
    covers here) across the window (a subquery over a recorded series: far cheaper than
    rate() over 30 days of raw samples), summed and divided by the number of slots. Slots
    without data count as no errors, so a young service is not judged by its first minutes
    alone (an average over the samples there are, as Sloth does, says -5000 % after one bad
    minute). Feeds errorBudgetRemaining."""
    mine = f"{{{_scope(namespace, name)}}}"
    step = ranges(slo_window)[SHORT]
    period = _period(slo_window)
    slots = round(period / durations.parse(step))
    return [
        {
            "record": f"imageserver:{sli}_error_ratio:slo_window",
            "expr": f"sum_over_time(imageserver:{sli}_error_ratio:rate{SHORT}{mine}"
            f"[{_promql(period)}:{step}]) / {slots}",
        }
        for sli in SLIS
    ]


def _alerts(namespace: str, name: str, slo: SLOSpec) -> list[dict[str, Any]]:
    objectives = {"availability": slo.availability.objective, "latency": slo.latency.objective}
    alerts = []
    for sli, objective in objectives.items():
        error_budget = budget(objective)
        for severity in ("page", "ticket"):
            conditions = []
            for alert in (a for a in BURN_ALERTS if a.severity == severity):
                threshold = f"{alert.factor * error_budget:.10g}"
                selector = f"{{{_scope(namespace, name)}}}"
                conditions.append(
                    f"(imageserver:{sli}_error_ratio:rate{alert.long}{selector} > {threshold}"
                    f" and imageserver:{sli}_error_ratio:rate{alert.short}{selector} > {threshold})"
                )
            title = "Page" if severity == "page" else "Ticket"
            what = (
                "failing requests"
                if sli == "availability"
                else f"requests slower than {slo.latency.threshold_seconds:g}s"
            )
            alerts.append(
                {
                    "alert": f"ImageServer{sli.capitalize()}Burn{title}",
                    "expr": "\n  or ".join(conditions),
                    "labels": {"severity": severity, "slo": sli, "imageserver": name, "namespace": namespace},
                    "annotations": {
                        "summary": f"{namespace}/{name} is burning its {sli} error budget too fast",
                        "description": f"{what} exceed the {objective:g}% objective's budget "
                        f"({error_budget:.4g} of requests over {slo.window}).",
                        "runbook_url": f"{RUNBOOK_BASE}/slo-burn-{severity}.md",
                    },
                }
            )
    return alerts


# Storage volume use (share of its size) past which a ticket, then a page, is raised.
DISK_TICKET, DISK_PAGE = 0.8, 0.9
REPLICATION_LAG_TICKET = 600  # seconds: ten minutes of copies owed to another datacenter


def _storage_rules(namespace: str, name: str) -> list[dict[str, Any]]:
    """What a resharding still has to move (read by the operator, which cannot scope a query
    that covers every ImageServer to each one's job), disks filling up, and copies owed to
    other datacenters piling up."""
    mine = f"{{{_scope(namespace, name)}}}"
    remaining = {
        "record": REBALANCE_REMAINING,
        "expr": f"sum by ({_by()}) (imageserver_rebalance_remaining{mine})",
    }
    used = f"1 - imageserver_storage_free_bytes{mine} / imageserver_storage_capacity_bytes{mine}"
    labels = {"imageserver": name, "namespace": namespace}
    disk = [
        {
            "alert": alert,
            "expr": f"{used} > {share:g}",
            "for": wait,
            "labels": {"severity": severity, **labels},
            "annotations": {
                "summary": f"{namespace}/{name}: a storage volume is over {share:.0%} full",
                "description": "{{ $labels.pod }} in {{ $labels.datacenter }} has used "
                "{{ $value | humanizePercentage }} of its volume; at its reserve it answers 507 "
                "and stops being ready, and the shard's other replicas take the writes.",
                "runbook_url": f"{RUNBOOK_BASE}/storage-full.md",
            },
        }
        for alert, share, wait, severity in (
            ("ImageServerStorageFilling", DISK_TICKET, "15m", "ticket"),
            ("ImageServerStorageFull", DISK_PAGE, "5m", "page"),
        )
    ]
    lag = {
        "alert": "ImageServerReplicationLag",
        "expr": f"max by ({_by('datacenter')}) (imageserver_replication_lag_seconds{mine})"
        f" > {REPLICATION_LAG_TICKET}",
        "for": "5m",
        "labels": {"severity": "ticket", **labels},
        "annotations": {
            "summary": f"{namespace}/{name}: copies owed to other datacenters are late",
            "description": "Storage nodes in {{ $labels.datacenter }} have owed a copy to another "
            "datacenter for {{ $value | humanizeDuration }}; until it arrives, an image uploaded "
            "there exists in one datacenter only.",
            "runbook_url": f"{RUNBOOK_BASE}/replication-lag.md",
        },
    }
    return [remaining, *disk, lag]


SILENT_FOR = "5m"  # outlasts a rolling restart of a datacenter's frontends and a few failed scrapes


def _silent_datacenters(namespace: str, name: str, datacenters: Sequence[str]) -> list[dict[str, Any]]:
    """A datacenter of the spec none of whose frontends is scraped: dead, never scheduled or
    not scraped, it is in no ratio, so no burn alert can fire for it, and the operator cannot
    judge it. It pages: the Gateway still routes its share there, and those failures are
    counted nowhere. Frontends export their build info whether or not traffic reaches them,
    so a drained or quiet datacenter is not silent."""
    return [
        {
            "alert": "ImageServerDatacenterSilent",
            "expr": f'absent({INFO}{{{_scope(namespace, name)}, datacenter="{dc}", role="frontend"}})',
            "for": SILENT_FOR,
            "labels": {"severity": "page", "imageserver": name, "namespace": namespace, "datacenter": dc},
            "annotations": {
                "summary": f"{namespace}/{name}: no frontend in {dc} is heard from",
                "description": f"Prometheus has scraped no frontend of datacenter {dc} for {SILENT_FOR}: "
                "they are down or not scraped. Requests routed there count in no SLO, and the "
                "operator cannot judge that datacenter, let alone drain it.",
                "runbook_url": f"{RUNBOOK_BASE}/datacenter-silent.md",
            },
        }
        for dc in datacenters
    ]


def rule_groups(namespace: str, name: str, slo: SLOSpec, datacenters: Sequence[str] = ()) -> dict[str, Any]:
    """The rule file (Prometheus `groups:`) for one ImageServer; `datacenters` (the spec's)
    each get an alert for when none of their frontends is heard from."""
    threshold = slo.latency.threshold_seconds
    return {
        "groups": [
            {
                "name": f"imageserver-{namespace}-{name}-recording",
                "rules": _recording(namespace, name, threshold, slo.window),
            },
            {
                "name": f"imageserver-{namespace}-{name}-budget",
                "interval": "1m",  # slow-moving: a minute is plenty, whatever the global interval
                "rules": _budget_window(namespace, name, slo.window),
            },
            {
                "name": f"imageserver-{namespace}-{name}-alerts",
                "rules": _alerts(namespace, name, slo) + _silent_datacenters(namespace, name, datacenters),
            },
            {"name": f"imageserver-{namespace}-{name}-storage", "rules": _storage_rules(namespace, name)},
        ]
    }


def rule_file(namespace: str, name: str, slo: SLOSpec, datacenters: Sequence[str] = ()) -> str:
    return yaml.safe_dump(rule_groups(namespace, name, slo, datacenters), sort_keys=False, width=200)
