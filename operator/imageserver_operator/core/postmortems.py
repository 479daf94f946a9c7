"""Postmortems, pure: the changes the operator makes to one as an incident goes on (built
through the model, from the Postmortem as it stands), and the markdown of the Google SRE
postmortem form."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from imageserver_operator.api.models import Impact, PostmortemSpec, TimelineEntry

MAX_TIMELINE = 500  # the schema's maxItems: past it, later steps are in Events and Slack only
MAX_TEXT = 4000  # the schema's maxLength of resolution


def appended(spec: Mapping[str, Any], entry: TimelineEntry, resolution: str = "") -> dict[str, Any]:
    """The patch that adds a timeline entry and, with `resolution`, what mitigated it."""
    current = PostmortemSpec.model_validate(spec)
    patch: dict[str, Any] = {}
    if len(current.timeline) < MAX_TIMELINE:
        patch["timeline"] = [e.model_dump(by_alias=True) for e in [*current.timeline, entry]]
    if resolution:
        patch["resolution"] = "\n".join(filter(None, [current.resolution, resolution]))[:MAX_TEXT]
    return patch


def resolved(spec: Mapping[str, Any], at: datetime.datetime, impact: Impact) -> dict[str, Any]:
    """The patch that resolves the incident: when, the closing timeline entry, its cost."""
    current = PostmortemSpec.model_validate(spec)
    stamp = at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        started = datetime.datetime.fromisoformat(current.started_at.replace("Z", "+00:00"))
        seconds = max(int((at - started).total_seconds()), 0)
    except ValueError:
        seconds = 0
    closing = TimelineEntry(time=stamp, event="incident resolved: burn back under budget", actor="operator")
    timeline = [*current.timeline, closing][-MAX_TIMELINE:] if current.timeline else [closing]
    return {
        "state": "Resolved",
        "resolvedAt": stamp,
        "timeline": [e.model_dump(by_alias=True) for e in timeline],
        "impact": impact.model_copy(update={"duration_seconds": seconds}).model_dump(by_alias=True),
    }


def _items(values: list[str], empty: str = "TODO") -> str:
    return "\n".join(f"- {v}" for v in values) if values else f"- {empty}"


def markdown(name: str, spec: PostmortemSpec) -> str:
    impact = spec.impact
    seconds = impact.duration_seconds
    duration = f"{seconds} s" if seconds < 120 else f"{seconds // 60} min"
    burn = (
        ", ".join(f"{b.burn_rate:.1f}x over {b.window}" for b in spec.detection.burn_rates) or "not recorded"
    )
    actions = "\n".join(f"| {item} | TODO | TODO |" for item in spec.action_items) or "| TODO | TODO | TODO |"
    timeline = "\n".join(f"| {e.time} | {e.actor} | {e.event} |" for e in spec.timeline) or "| | | |"
    lessons = spec.lessons_learned
    return f"""# Postmortem: {spec.title}

| | |
|---|---|
| Postmortem | `{name}` |
| ImageServer | `{spec.image_server}` |
| Status | {spec.state} |
| Started | {spec.started_at or "unknown"} |
| Resolved | {spec.resolved_at or "not yet"} |
| Authors | imageserver-operator (draft); TODO: the people who finish it |

This is a blameless postmortem: it is about systems and processes, not people.

## Summary

{spec.summary or "TODO"}

## Impact

- Duration: {duration}
- Error budget consumed: {impact.error_budget_consumed_percent:.1f} % of the SLO window's budget
- Failed requests (estimated): {impact.failed_requests_estimate}

## Root causes

{spec.root_causes}

## Trigger

{spec.trigger or "TODO"}

## Resolution

{spec.resolution or "TODO"}

## Detection

{spec.detection.alert or "TODO"} at {spec.detection.detected_at or "unknown"}; burn rates: {burn}.

## Action items

| Action item | Owner | Bug |
|---|---|---|
{actions}

## Lessons learned

### What went well

{_items(lessons.what_went_well)}

### What went wrong

{_items(lessons.what_went_wrong)}

### Where we got lucky

{_items(lessons.where_we_got_lucky)}

## Timeline

| Time (UTC) | Who | What |
|---|---|---|
{timeline}

## Supporting information

- Runbooks: {", ".join(spec.links.runbooks) or "none"}
- Slack thread: {spec.links.slack_thread or "none"}
"""
