"""Every alert and every automated action has a runbook page with the four parts on-call needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from imageserver_operator.api.models import SLOSpec
from imageserver_operator.core import slo

RUNBOOKS = Path(__file__).resolve().parents[3] / "runbooks"
SECTIONS = ("## What it means", "## How to confirm", "## Mitigate by hand", "## Undo the automation")


def test_every_alert_links_an_existing_runbook() -> None:
    groups = slo.rule_groups("ns", "photos", SLOSpec(), ["dc-a"])["groups"]
    urls = {r["annotations"]["runbook_url"] for g in groups for r in g["rules"] if "alert" in r}
    assert urls == {
        "runbooks/slo-burn-page.md",
        "runbooks/slo-burn-ticket.md",
        "runbooks/storage-full.md",
        "runbooks/replication-lag.md",
        "runbooks/datacenter-silent.md",
    }
    for url in urls:
        assert (RUNBOOKS.parent / url).is_file(), url


@pytest.mark.parametrize(
    "page",
    [
        "slo-burn-page",
        "slo-burn-ticket",
        "slo-unknown",
        "rollback",
        "rollout",
        "releases-frozen",
        "capacity-insufficient",
        "drain",
        "undrain",
        "storage-full",
        "replication-lag",
        "datacenter-silent",
        "remediation-failing",
    ],
)
def test_each_runbook_says_what_it_means_how_to_confirm_mitigate_and_undo(page: str) -> None:
    text = (RUNBOOKS / f"{page}.md").read_text()
    positions = [text.index(section) for section in SECTIONS]
    assert positions == sorted(positions)
    assert page in (RUNBOOKS / "README.md").read_text()
