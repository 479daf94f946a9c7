"""Prometheus, through prometheus-api-client: the two queries of an evaluation cycle."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from imageserver_operator.core import evaluation
from imageserver_operator.core.evaluation import Budgets, Key
from imageserver_operator.core.policy import Observation

log = logging.getLogger(__name__)


class Prometheus:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        # One try per cycle: the next cycle is the retry, and a dead Prometheus must not stall it.
        self.api = PrometheusConnect(url=url, disable_ssl=True, retry=Retry(total=0), timeout=int(timeout))
        self.timeout = timeout
        self.queries = 0  # for tests and metrics: per cycle it must not grow with ImageServers
        self.down = False  # log the outage once, not every cycle

    def _query(self, promql: str) -> list[Mapping[str, Any]]:
        self.queries += 1
        result = self.api.custom_query(promql, params={"timeout": f"{self.timeout:g}s"})
        return list(result)

    def observe(self, budgets: Mapping[Key, Budgets]) -> dict[Key, Observation]:
        """Burn for every ImageServer; all of them `reachable=False` when Prometheus is not."""
        try:
            ratios = self._query(evaluation.RATIO_QUERY)
            traffic = self._query(evaluation.TRAFFIC_QUERY)
        except Exception as error:  # connection refused, timeouts, HTTP errors: no data, no action
            if not self.down:
                log.warning("Prometheus unreachable, no automatic action until it answers: %s", error)
            self.down = True
            return evaluation.unreachable(budgets)
        if self.down:
            log.info("Prometheus answers again")
            self.down = False
        return evaluation.observations(ratios, traffic, budgets)
