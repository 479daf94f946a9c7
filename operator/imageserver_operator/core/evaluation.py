"""Burn rates for every ImageServer from two Prometheus answers. Pure.

The SLO rules (`slo.py`) name each error ratio by SLI, grouping and window, so one query on
`__name__` returns every ratio of every ImageServer at once, and one more returns request
and error rates (for the low-traffic guard and the incident's failed-request estimate) and
what the storage nodes still have to move after a resharding: a
fixed number of queries per cycle, however many ImageServers there are. Burn = ratio /
budget; availability and latency are folded into the worse of the two per window. The
budget window's ratio (`slo_window`) is the share of the budget spent.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from imageserver_operator.core import slo
from imageserver_operator.core.policy import Observation

Key = tuple[str, str]  # namespace, name
SLIS = "|".join(slo.SLIS)
GROUPINGS = "_by_datacenter|_by_revision|_by_datacenter_revision"
RATIO_QUERY = (
    f'{{__name__=~"imageserver:({SLIS})_error_ratio({GROUPINGS})?'
    f':(rate({"|".join(slo.WINDOWS)})|slo_window)"}}'
)
TRAFFIC_QUERY = " or ".join(
    [
        f"label_replace(sum by (namespace, imageserver) (imageserver:{kind}:rate{slo.SHORT}), "
        f'"kind", "{kind}", "", "")'
        for kind in ("requests", "errors")
    ]
    # What the storage nodes still have to move after a resharding, in the same answer: as
    # each ImageServer's rules record it from its own scrapes only, since one query over the
    # raw series of every ImageServer cannot name each one's job.
    + [
        f"label_replace(sum by (namespace, imageserver) ({slo.REBALANCE_REMAINING}), "
        '"kind", "rebalance_remaining", "", "")',
        # What each revision serves and fails in each datacenter: a rollout's wave and control.
        *(
            f"label_replace(sum by (namespace, imageserver, datacenter, revision) "
            f'(imageserver:{kind}:rate{slo.SHORT}), "kind", "revision_{kind}", "", "")'
            for kind in ("requests", "errors", "slow")
        ),
        # Which datacenters' frontends are heard from at all (a quiet one is not a silent one).
        f"label_replace(sum by (namespace, imageserver, datacenter) ({slo.FRONTENDS}), "
        '"kind", "frontends", "", "")',
    ]
)
NAME = re.compile(rf"imageserver:({SLIS})_error_ratio({GROUPINGS})?:(?:rate(\w+)|slo_window)")


@dataclass(frozen=True)
class Budgets:
    availability: float  # 1 - objective, as a ratio
    latency: float


def _value(sample: Mapping[str, Any]) -> float | None:
    try:
        value = float(sample["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return None if math.isnan(value) else value  # NaN (0/0: no requests) is no data


def observations(
    ratios: Iterable[Mapping[str, Any]],
    traffic: Iterable[Mapping[str, Any]],
    budgets: Mapping[Key, Budgets],
) -> dict[Key, Observation]:
    """One Observation per ImageServer in `budgets`; those without series get empty burns."""
    service: defaultdict[Key, dict[str, float]] = defaultdict(dict)
    spent: dict[Key, float] = {}
    by_dc: defaultdict[Key, defaultdict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    by_rev: defaultdict[Key, defaultdict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    serving: defaultdict[Key, defaultdict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for sample in ratios:
        metric = sample.get("metric", {})
        match = NAME.fullmatch(metric.get("__name__", ""))
        key = (metric.get("namespace", ""), metric.get("imageserver", ""))
        value = _value(sample)
        if match is None or key not in budgets or value is None:
            continue
        sli, grouping, window = match.groups()
        burn = value / max(getattr(budgets[key], sli), 1e-9)
        if window is None:  # the budget window: burn over it is the share of the budget spent
            spent[key] = max(spent.get(key, 0.0), burn)
            continue
        if grouping == "_by_datacenter":
            target = by_dc[key][metric.get("datacenter", "")]
        elif grouping == "_by_revision":
            target = by_rev[key][metric.get("revision", "")]
        elif grouping == "_by_datacenter_revision":
            target = serving[key][f"{metric.get('datacenter', '')}/{metric.get('revision', '')}"]
        else:
            target = service[key]
        target[window] = max(target.get(window, 0.0), burn)  # the worse SLI decides
    rates: defaultdict[Key, dict[str, float]] = defaultdict(dict)
    heard: defaultdict[Key, dict[str, float]] = defaultdict(dict)
    per_revision: defaultdict[Key, defaultdict[str, dict[str, float]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for sample in traffic:
        metric = sample.get("metric", {})
        value = _value(sample)
        key = (metric.get("namespace", ""), metric.get("imageserver", ""))
        kind = metric.get("kind", "")
        if value is None:
            continue
        if kind == "frontends":
            heard[key][metric.get("datacenter", "")] = value
        elif kind.startswith("revision_"):
            scope = f"{metric.get('datacenter', '')}/{metric.get('revision', '')}"
            per_revision[key][scope][kind.removeprefix("revision_")] = value
        else:
            rates[key][metric.get("kind", "")] = value
    return {
        key: Observation(
            reachable=True,
            requests_per_second=rates[key].get("requests", 0.0),
            errors_per_second=rates[key].get("errors", 0.0),
            budget_spent=spent.get(key),
            rebalance_remaining=rates[key].get("rebalance_remaining"),
            # Not reported at all (rules from before the count): judged by the ratios instead.
            frontends_by_datacenter=dict(heard[key]) if key in heard else None,
            service=dict(service.get(key, {})),
            by_datacenter={dc: dict(b) for dc, b in by_dc.get(key, {}).items()},
            by_revision={rev: dict(b) for rev, b in by_rev.get(key, {}).items()},
            by_datacenter_revision={scope: dict(b) for scope, b in serving.get(key, {}).items()},
            rates_by_datacenter_revision={scope: dict(r) for scope, r in per_revision.get(key, {}).items()},
        )
        for key in budgets
    }


def unreachable(budgets: Mapping[Key, Budgets]) -> dict[Key, Observation]:
    return {key: Observation(reachable=False) for key in budgets}
