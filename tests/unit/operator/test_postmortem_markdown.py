"""A Postmortem reads as a Google SRE postmortem, with the operator's facts and TODOs for people."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from imageserver_operator.api.models import Detection, Impact, PostmortemSpec, TimelineEntry
from imageserver_operator.core import postmortems
from imageserver_operator.core.postmortems import MAX_TIMELINE, appended, markdown, resolved

SPEC = PostmortemSpec.model_validate(
    {
        "imageServer": "photos",
        "title": "Revision 1.1.0 failed half of all requests",
        "state": "Resolved",
        "startedAt": "2026-11-21T12:00:00Z",
        "resolvedAt": "2026-11-21T12:03:10Z",
        "summary": "1.1.0 failed 50 % of requests; the operator rolled back to 1.0.0 after 95 s.",
        "impact": {"durationSeconds": 190, "errorBudgetConsumedPercent": 3.4, "failedRequestsEstimate": 4100},
        "trigger": "Rollout of 1.1.0.",
        "detection": {
            "alert": "operator burn evaluation",
            "detectedAt": "2026-11-21T12:01:20Z",
            "burnRates": [{"window": "5m", "burnRate": 480.0}, {"window": "1h", "burnRate": 40.0}],
        },
        "resolution": "Rolled back to 1.0.0 by the operator.",
        "timeline": [
            {"time": "2026-11-21T12:00:00Z", "event": "1.1.0 rolled out", "actor": "operator"},
            {
                "time": "2026-11-21T12:01:35Z",
                "event": "rollback to 1.0.0: burning 480x over 5m",
                "actor": "operator",
            },
        ],
        "links": {
            "runbooks": ["runbooks/rollback.md"],
            "slackThread": "https://slack.example/archives/C1/p1",
        },
    }
)


def test_markdown_has_every_section_of_the_google_form() -> None:
    text = markdown("photos-20261121-1200", SPEC)
    for heading in (
        "# Postmortem: Revision 1.1.0 failed half of all requests",
        "## Summary",
        "## Impact",
        "## Root causes",
        "## Trigger",
        "## Resolution",
        "## Detection",
        "## Action items",
        "## Lessons learned",
        "### What went well",
        "### What went wrong",
        "### Where we got lucky",
        "## Timeline",
        "## Supporting information",
    ):
        assert heading in text
    assert "- Duration: 3 min" in text
    assert "- Error budget consumed: 3.4 % of the SLO window's budget" in text
    assert "burn rates: 480.0x over 5m, 40.0x over 1h." in text
    assert "| 2026-11-21T12:01:35Z | operator | rollback to 1.0.0: burning 480x over 5m |" in text
    assert "| TODO: prevent recurrence | TODO | TODO |" in text
    assert "blameless" in text
    assert "TODO: for people. The operator knows symptoms, not causes." in text


def test_a_short_incident_says_its_duration_in_seconds() -> None:
    spec = SPEC.model_copy(update={"impact": SPEC.impact.model_copy(update={"duration_seconds": 32})})
    assert "- Duration: 32 s" in markdown("photos-1", spec)


def test_the_operators_changes_are_built_through_the_model_and_stay_within_its_bounds() -> None:
    entry = TimelineEntry(time="2026-11-28T12:00:00Z", event="Rolled back 1.0.0", actor="operator")
    spec = {"imageServer": "photos", "title": "t", "startedAt": "2026-11-28T11:58:00Z", "resolution": "a"}
    patch = appended(spec, entry, "b")
    assert patch["timeline"] == [
        {"time": "2026-11-28T12:00:00Z", "event": "Rolled back 1.0.0", "actor": "operator"}
    ]
    assert patch["resolution"] == "a\nb"
    full = {**spec, "timeline": [entry.model_dump()] * MAX_TIMELINE}
    assert "timeline" not in appended(full, entry)  # the schema's maxItems: later steps go to Events
    done = resolved(
        spec, datetime.datetime(2026, 11, 28, 12, 1, tzinfo=datetime.UTC), Impact(failed_requests_estimate=7)
    )
    assert done["state"] == "Resolved" and done["resolvedAt"] == "2026-11-28T12:01:00Z"
    assert done["impact"] == {
        "durationSeconds": 180,
        "errorBudgetConsumedPercent": 0,
        "failedRequestsEstimate": 7,
    }
    assert done["timeline"][-1]["event"].startswith("incident resolved")


def _opened() -> dict[str, Any]:
    return PostmortemSpec(
        image_server="photos",
        title="a bad build",
        started_at="2026-11-21T12:00:00Z",
        detection=Detection(detected_at="2026-11-21T12:00:04Z"),
        timeline=[
            TimelineEntry(time="2026-11-21T12:00:04Z", event="incident opened: burn 50x"),
            TimelineEntry(time="2026-11-21T12:00:09Z", event="Rolled back 1.0.0: revision 1.1.0 burns"),
        ],
    ).model_dump(by_alias=True)


@pytest.mark.parametrize(
    ("spent", "severity", "p0"),
    [(0.5, "SEV3", False), (5.0, "SEV2", False), (20.0, "SEV1", False), (20.5, "SEV1", True)],
)
def test_resolution_sets_severity_timing_review_and_the_p0_item(
    spent: float, severity: str, p0: bool
) -> None:
    at = datetime.datetime(2026, 11, 21, 12, 1, tzinfo=datetime.UTC)
    impact = Impact(error_budget_consumed_percent=spent)
    patch = postmortems.resolved(
        _opened(), at, impact, mitigations=("Rolled back", "Drained"), p0_above_percent=20
    )
    done = PostmortemSpec.model_validate({**_opened(), **patch})
    assert done.severity == severity
    assert (done.timing.detect_seconds, done.timing.mitigate_seconds, done.timing.resolve_seconds) == (
        4,
        9,
        60,
    )
    assert done.review.due == "2026-11-28T12:01:00Z" and done.review.status == "Draft"
    assert any(item.priority == "P0" for item in done.action_items) is p0
    again = postmortems.resolved({**_opened(), **patch}, at, impact, p0_above_percent=20)
    assert (
        sum(
            item.priority == "P0"
            for item in PostmortemSpec.model_validate({**_opened(), **again}).action_items
        )
        == p0
    )


def test_action_items_written_as_text_are_read_as_items() -> None:
    """Postmortems stored before action items had owners and priorities."""
    spec = PostmortemSpec.model_validate({**_opened(), "actionItems": ["add a canary"]})
    assert [(i.description, i.priority, i.owner) for i in spec.action_items] == [("add a canary", "P2", "")]


def test_a_review_moves_with_its_owner() -> None:
    patch = postmortems.reviewed(_opened(), "InReview", "ana")
    assert patch == {"review": {"status": "InReview", "owner": "ana", "due": ""}}
    kept = postmortems.reviewed({**_opened(), **patch}, "Published")
    assert kept["review"]["owner"] == "ana"
