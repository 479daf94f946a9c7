"""Request metrics: what the SLO rules and the canary verdict count exists from the start."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from imageserver.metrics import Metrics


def requests(metrics: Metrics) -> dict[tuple[str, str], float]:
    families = text_string_to_metric_families(metrics.exposition().decode())
    family = next(f for f in families if f.name == "imageserver_http_requests")
    return {
        (s.labels["route"], s.labels["code"]): s.value for s in family.samples if s.name.endswith("_total")
    }


@pytest.mark.parametrize(
    ("role", "routes"),
    [("frontend", {"upload", "original", "variant"}), ("storage", {"blob_get", "blob_put"})],
)
def test_a_new_process_exposes_its_error_series_at_zero_before_any_request(
    role: str, routes: set[str]
) -> None:
    """rate() sees nothing of a counter before its second sample: a series born with the first
    error would hide it (and a canary is all new processes)."""
    seen = requests(Metrics("dc-a", "1.1.0", role))
    assert {route for route, _ in seen} == routes
    assert {code for _, code in seen} == {"200", "500", "503"}
    assert set(seen.values()) == {0.0}


def test_an_answer_counts_on_the_primed_series() -> None:
    metrics = Metrics("dc-a", "1.1.0", "frontend")
    metrics.observe("variant", 500, 0.01)
    assert requests(metrics)[("variant", "500")] == 1.0
