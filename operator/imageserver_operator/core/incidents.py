"""Incidents from decisions: when one opens, when it ends, what it cost. Pure.

The open incident's Postmortem name and the last action (recorded *before* it is taken) are
annotations the operator owns on the ImageServer, so any replica picks them up.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imageserver_operator.api.models import GROUP, Impact, Tally
from imageserver_operator.core.policy import Action, Decision, Observation

INCIDENT_ANNOTATION = f"{GROUP}/incident"  # the open incident's Postmortem name
LAST_ACTION_ANNOTATION = f"{GROUP}/last-action"  # {"kind", "target", "at", "incident", "reason", "done"}
# Users fine this long before an incident is resolved: no resolve-and-reopen on a blip.
RESOLVE_AFTER = datetime.timedelta(seconds=30)
FIVE_MINUTES = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class Recorded:
    """An action, written to the ImageServer before it is taken (done=False) and again after
    (done=True): a write-ahead record. One found not done was interrupted by a crash and is
    completed, not decided again, so a restart never makes a second action."""

    kind: str
    target: str
    at: datetime.datetime
    incident: str
    reason: str = ""
    done: bool = True
    dropped: str = ""  # why an interrupted action was not completed after all
    told: bool = True  # False: taken, and people not yet told (Event, Slack, Postmortem)

    def annotation(self) -> str:
        fields = {
            "kind": self.kind,
            "target": self.target,
            "at": self.at.isoformat(),
            "incident": self.incident,
            "reason": self.reason,
            "done": self.done,
        }
        if self.dropped:
            fields["dropped"] = self.dropped
        if not self.told:
            fields["told"] = False
        return json.dumps(fields, sort_keys=True)


def last_action(annotations: Mapping[str, str]) -> Recorded | None:
    raw = annotations.get(LAST_ACTION_ANNOTATION)
    if not raw:
        return None
    try:
        data: dict[str, Any] = json.loads(raw)
        return Recorded(
            str(data["kind"]),
            str(data["target"]),
            _aware(datetime.datetime.fromisoformat(data["at"])),
            str(data["incident"]),
            str(data.get("reason", "")),
            data.get("done", True) is not False,
            str(data.get("dropped", "")),
            data.get("told", True) is not False,
        )
    except (ValueError, KeyError, TypeError):
        return None  # a hand-edited annotation must not stop the automation


def _aware(moment: datetime.datetime) -> datetime.datetime:
    """A time without an offset (a hand edit) is taken as UTC, never compared as naive."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)


def untold(annotations: Mapping[str, str]) -> Recorded | None:
    """The action taken whose telling a crash cut short, if any."""
    recorded = last_action(annotations)
    if (
        recorded is None
        or not recorded.done
        or recorded.told
        or recorded.kind not in ("rollback", "drain", "undrain")
    ):
        return None
    return recorded


def interrupted(annotations: Mapping[str, str]) -> Recorded | None:
    """The recorded action a crash stopped before it was taken, if any."""
    recorded = last_action(annotations)
    if recorded is None or recorded.done or recorded.kind not in ("rollback", "drain", "undrain"):
        return None
    return recorded


def postmortem_name(imageserver: str, now: datetime.datetime) -> str:
    return f"{imageserver}-{now.strftime('%Y%m%d-%H%M%S')}"


@dataclass(frozen=True)
class Step:
    """What one decision means for the incident."""

    open_incident: str = ""  # a new incident to open (its Postmortem name)
    incident: str = ""  # the incident the actions belong to
    actions: tuple[Action, ...] = ()
    resolve: bool = False
    notify_unknown: bool = False


def step(
    decision: Decision,
    open_incident: str,
    fine_for: datetime.timedelta,
    imageserver: str,
    now: datetime.datetime,
) -> Step:
    """An incident opens on a page-level burn that hurts users now, or with an action; it is
    resolved once users have been fine (`fine_for`, this cycle included) for RESOLVE_AFTER."""
    # Incidents are pages: a ticket-level slow burn shows in SLOHealthy and the ticket alert.
    burning = decision.paging
    acting = [a for a in decision.actions if a.kind in ("rollback", "drain", "undrain", "page")]
    unknown = any(a.kind == "notify_unknown" for a in decision.actions)
    if not open_incident and (burning or any(a.kind != "undrain" for a in acting)):
        new = postmortem_name(imageserver, now)
        return Step(open_incident=new, incident=new, actions=tuple(acting), notify_unknown=unknown)
    # Resolved once users are fine again (short window), not when the long windows forget it.
    resolve = bool(open_incident) and decision.recovered and fine_for >= RESOLVE_AFTER
    return Step(incident=open_incident, actions=tuple(acting), resolve=resolve, notify_unknown=unknown)


def add(tally: Tally, seen: Observation, seconds: float, at: str) -> Tally:
    """An incident's cost with one more cycle counted, from Prometheus' 5m rates."""
    return Tally(
        seconds=tally.seconds + seconds,
        requests=tally.requests + seen.requests_per_second * seconds,
        failed=tally.failed + seen.errors_per_second * seconds,
        peak_errors_per_second=max(tally.peak_errors_per_second, seen.errors_per_second),
        counted_at=at,
    )


def impact(
    tally: Tally, budget: float, window: datetime.timedelta, short: datetime.timedelta = FIVE_MINUTES
) -> Impact:
    """Failed requests, and the share of the SLO window's error budget they spent: the
    budget is `budget` times the requests the window sees at the incident's mean rate.

    The rates are over the short window (`short`: 5 minutes for a 30-day SLO), which spreads
    a burst over it: summed over an incident shorter than that they undercount it. The worst
    short window (peak rate x its length) holds a short incident whole, so the estimate is
    the larger of the two."""
    failed = max(tally.failed, tally.peak_errors_per_second * short.total_seconds())
    window_requests = tally.requests / tally.seconds * window.total_seconds() if tally.seconds else 0.0
    spent = 100 * failed / (budget * window_requests) if budget and window_requests else 0.0
    return Impact(failed_requests_estimate=round(failed), error_budget_consumed_percent=round(spent, 2))
