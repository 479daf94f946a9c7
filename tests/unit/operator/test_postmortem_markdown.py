"""A Postmortem reads as a Google SRE postmortem, with the operator's facts and TODOs for people."""

from __future__ import annotations

import datetime

from imageserver_operator.api.models import Impact, PostmortemSpec, TimelineEntry
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
