"""Postmortems, pure: the changes the operator makes to one as an incident goes on (built
through the model, from the Postmortem as it stands), and the markdown of the Google SRE
postmortem form."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from imageserver_operator.api.durations import parse_time, stamp
from imageserver_operator.api.models import ActionItem, Impact, PostmortemSpec, TimelineEntry, Timing

MAX_TIMELINE = 500  # the schema's maxItems: past it, later steps are in Events and Slack only
MAX_TEXT = 4000  # the schema's maxLength of resolution
REVIEW_WITHIN = datetime.timedelta(days=7)
SEVERITIES = ((20.0, "SEV1"), (5.0, "SEV2"), (0.0, "SEV3"))  # share of the budget spent, from


def severity(spent_percent: float) -> str:
    return next(level for floor, level in SEVERITIES if spent_percent >= floor)


def timing(current: PostmortemSpec, at: datetime.datetime, mitigations: tuple[str, ...]) -> Timing:
    """Time to detect, mitigate and resolve, from the first burn, read off the timeline: the
    first entry that says one of `mitigations` (an action that changed the world) mitigated it."""
    started = parse_time(current.started_at)
    if started is None:
        return Timing()

    def since(moment: datetime.datetime | None) -> int:
        return max(int((moment - started).total_seconds()), 0) if moment is not None else 0

    acted = next(
        (
            parse_time(e.time)
            for e in current.timeline
            if e.actor != "alert" and e.event.startswith(mitigations)
        ),
        None,
    )
    return Timing(
        detect_seconds=since(parse_time(current.detection.detected_at)),
        mitigate_seconds=since(acted) if acted is not None else since(at),
        resolve_seconds=since(at),
    )


def appended(spec: Mapping[str, Any], entry: TimelineEntry, resolution: str = "") -> dict[str, Any]:
    """The patch that adds a timeline entry and, with `resolution`, what mitigated it."""
    current = PostmortemSpec.model_validate(spec)
    patch: dict[str, Any] = {}
    if len(current.timeline) < MAX_TIMELINE:
        patch["timeline"] = [e.model_dump(by_alias=True) for e in [*current.timeline, entry]]
    if resolution:
        patch["resolution"] = "\n".join(filter(None, [current.resolution, resolution]))[:MAX_TEXT]
    return patch


def resolved(
    spec: Mapping[str, Any],
    at: datetime.datetime,
    impact: Impact,
    *,
    mitigations: tuple[str, ...] = (),
    p0_above_percent: float = 100.0,
) -> dict[str, Any]:
    """The patch that resolves the incident: when, the closing timeline entry, its cost, its
    severity and timing, when its review is due; and, when it spent more than
    `p0_above_percent` of the budget, the P0 action item the error budget policy asks for."""
    current = PostmortemSpec.model_validate(spec)
    started = parse_time(current.started_at)
    seconds = max(int((at - started).total_seconds()), 0) if started is not None else 0
    closing = TimelineEntry(
        time=stamp(at), event="incident resolved: burn back under budget", actor="operator"
    )
    timeline = [*current.timeline, closing][-MAX_TIMELINE:] if current.timeline else [closing]
    spent = impact.error_budget_consumed_percent
    items = list(current.action_items)
    if spent > p0_above_percent and not any(item.priority == "P0" for item in items):
        items.insert(
            0,
            ActionItem(
                description=f"TODO: this incident spent {spent:.1f} % of the error budget (more than "
                f"{p0_above_percent:g} %): the error budget policy asks for a P0 action item before the next "
                "release; name it, its owner and its ticket",
                priority="P0",
            ),
        )
    due = current.review.due or stamp(at + REVIEW_WITHIN)
    return {
        "state": "Resolved",
        "resolvedAt": stamp(at),
        "timeline": [e.model_dump(by_alias=True) for e in timeline],
        "impact": impact.model_copy(update={"duration_seconds": seconds}).model_dump(by_alias=True),
        "severity": severity(spent),
        "timing": timing(current, at, mitigations).model_dump(by_alias=True),
        "review": current.review.model_copy(update={"due": due}).model_dump(by_alias=True),
        "actionItems": [item.model_dump(by_alias=True) for item in items[:50]],
    }


def reviewed(spec: Mapping[str, Any], status: str, owner: str = "") -> dict[str, Any]:
    """The patch that moves the review (people, through the CLI); the schema refuses a move
    out of order and a publication without an owner, with a message."""
    current = PostmortemSpec.model_validate(spec)
    review = current.review.model_copy(update={"status": status, "owner": owner or current.review.owner})
    return {"review": review.model_dump(by_alias=True)}


def _items(values: list[str], empty: str = "TODO") -> str:
    return "\n".join(f"- {v}" for v in values) if values else f"- {empty}"


def markdown(name: str, spec: PostmortemSpec) -> str:
    impact = spec.impact
    seconds = impact.duration_seconds
    duration = f"{seconds} s" if seconds < 120 else f"{seconds // 60} min"
    burn = (
        ", ".join(f"{b.burn_rate:.1f}x over {b.window}" for b in spec.detection.burn_rates) or "not recorded"
    )
    actions = (
        "\n".join(
            f"| {item.priority} | {item.description} | {item.owner or 'TODO'} | {item.ticket or 'TODO'} |"
            for item in spec.action_items
        )
        or "| | TODO | TODO | TODO |"
    )
    timed, resolve = spec.timing, spec.timing.resolve_seconds
    review = f"{spec.review.status}, owner {spec.review.owner or 'TODO'}, due {spec.review.due or '—'}"
    involved = f"revision {spec.revision or 'unknown'}" + (
        f", datacenter {spec.datacenter}" if spec.datacenter else ""
    )
    timeline = "\n".join(f"| {e.time} | {e.actor} | {e.event} |" for e in spec.timeline) or "| | | |"
    lessons = spec.lessons_learned
    return f"""# Postmortem: {spec.title}

| | |
|---|---|
| Postmortem | `{name}` |
| ImageServer | `{spec.image_server}` |
| Status | {spec.state}; review: {review} |
| Severity | {spec.severity or "not yet (set at resolution)"} |
| Involved | {involved} |
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
- Time to detect {timed.detect_seconds} s, to mitigate {timed.mitigate_seconds} s, to resolve {resolve} s

## Root causes

{spec.root_causes}

## Trigger

{spec.trigger or "TODO"}

## Resolution

{spec.resolution or "TODO"}

## Detection

{spec.detection.alert or "TODO"} at {spec.detection.detected_at or "unknown"}; burn rates: {burn}.

## Action items

| Priority | Action item | Owner | Ticket |
|---|---|---|---|
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
