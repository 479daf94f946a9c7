"""Incidents from decisions: when one opens, what each step adds to the Postmortem, when it
ends. Pure: the remediation loop turns the results into API calls, Slack messages, Events.

State lives on the ImageServer, so a restarted operator picks it up: the open incident's
Postmortem name and the last action (recorded *before* it is taken) are annotations.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from typing import Any

from imageserver_operator.annotations import PAUSED_ANNOTATION
from imageserver_operator.models import GROUP
from imageserver_operator.policy import Action, Decision, Observation, State

INCIDENT_ANNOTATION = f"{GROUP}/incident"  # the open incident's Postmortem name
LAST_ACTION_ANNOTATION = f"{GROUP}/last-action"  # {"kind", "target", "at", "incident", "reason", "done"}
UNKNOWN_ANNOTATION = f"{GROUP}/slo-unknown-notified"  # "true" once "no data" was told
# Users fine this long before an incident is resolved: no resolve-and-reopen on a blip.
RESOLVE_AFTER = datetime.timedelta(seconds=30)


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

    def annotation(self) -> str:
        return json.dumps(
            {
                "kind": self.kind,
                "target": self.target,
                "at": self.at.isoformat(),
                "incident": self.incident,
                "reason": self.reason,
                "done": self.done,
            },
            sort_keys=True,
        )


def last_action(annotations: dict[str, str]) -> Recorded | None:
    raw = annotations.get(LAST_ACTION_ANNOTATION)
    if not raw:
        return None
    try:
        data: dict[str, Any] = json.loads(raw)
        return Recorded(
            str(data["kind"]),
            str(data["target"]),
            datetime.datetime.fromisoformat(data["at"]),
            str(data["incident"]),
            str(data.get("reason", "")),
            data.get("done", True) is not False,
        )
    except (ValueError, KeyError, TypeError):
        return None  # a hand-edited annotation must not stop the automation


def interrupted(annotations: dict[str, str]) -> Recorded | None:
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


@dataclass(frozen=True)
class Tally:
    """What an open incident costs users, summed cycle by cycle from Prometheus' 5m rates."""

    seconds: float = 0.0
    requests: float = 0.0
    failed: float = 0.0
    peak_errors_per_second: float = 0.0

    def add(self, seen: Observation, seconds: float) -> Tally:
        return Tally(
            self.seconds + seconds,
            self.requests + seen.requests_per_second * seconds,
            self.failed + seen.errors_per_second * seconds,
            max(self.peak_errors_per_second, seen.errors_per_second),
        )

    def impact(self, budget: float, window: datetime.timedelta) -> dict[str, float]:
        """Failed requests, and the share of the SLO window's error budget they spent: the
        budget is `budget` times the requests the window sees at the incident's mean rate.

        The rates are 5m rates, which spread a burst over five minutes: summed over an
        incident shorter than that they undercount it. The worst 5 minutes (peak rate x 300 s)
        holds a short incident whole, so the estimate is the larger of the two."""
        failed = max(self.failed, self.peak_errors_per_second * 300)
        window_requests = self.requests / self.seconds * window.total_seconds() if self.seconds else 0.0
        spent = 100 * failed / (budget * window_requests) if budget and window_requests else 0.0
        return {"failedRequestsEstimate": round(failed), "errorBudgetConsumedPercent": round(spent, 2)}


def state_with_history(base: State, annotations: dict[str, str]) -> State:
    """The policy's state, completed with what the annotations remember."""
    recorded = last_action(annotations)
    return State(
        remediation=base.remediation,
        datacenters=base.datacenters,
        current_revision=base.current_revision,
        previous_revision=base.previous_revision,
        current_since=base.current_since,
        last_action_at=recorded.at if recorded else None,
        paused=annotations.get(PAUSED_ANNOTATION, "").lower() == "true",
        unknown_notified=annotations.get(UNKNOWN_ANNOTATION) == "true",
        unknown_since=base.unknown_since,
        rolling_out=base.rolling_out,
        previous_baseline=base.previous_baseline,
        min_requests_per_second=base.min_requests_per_second,
    )
