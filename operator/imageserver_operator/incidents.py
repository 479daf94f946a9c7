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
from imageserver_operator.policy import Action, Decision, State

INCIDENT_ANNOTATION = f"{GROUP}/incident"  # the open incident's Postmortem name
LAST_ACTION_ANNOTATION = f"{GROUP}/last-action"  # {"kind", "target", "at", "incident"}
UNKNOWN_ANNOTATION = f"{GROUP}/slo-unknown-notified"  # "true" once "no data" was told
RESOLVE_AFTER = 3  # healthy cycles in a row before an incident is resolved


@dataclass(frozen=True)
class Recorded:
    kind: str
    target: str
    at: datetime.datetime
    incident: str

    def annotation(self) -> str:
        return json.dumps(
            {"kind": self.kind, "target": self.target, "at": self.at.isoformat(), "incident": self.incident},
            sort_keys=True,
        )


def last_action(annotations: dict[str, str]) -> Recorded | None:
    raw = annotations.get(LAST_ACTION_ANNOTATION)
    if not raw:
        return None
    try:
        data: dict[str, Any] = json.loads(raw)
        return Recorded(
            data["kind"], data["target"], datetime.datetime.fromisoformat(data["at"]), data["incident"]
        )
    except (ValueError, KeyError, TypeError):
        return None  # a hand-edited annotation must not stop the automation


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
    decision: Decision, open_incident: str, healthy_streak: int, imageserver: str, now: datetime.datetime
) -> Step:
    burning = decision.slo_healthy == "False"
    acting = [a for a in decision.actions if a.kind in ("rollback", "drain", "undrain", "page")]
    unknown = any(a.kind == "notify_unknown" for a in decision.actions)
    if not open_incident and (burning or any(a.kind != "undrain" for a in acting)):
        new = postmortem_name(imageserver, now)
        return Step(open_incident=new, incident=new, actions=tuple(acting), notify_unknown=unknown)
    resolve = bool(open_incident) and decision.slo_healthy == "True" and healthy_streak + 1 >= RESOLVE_AFTER
    return Step(incident=open_incident, actions=tuple(acting), resolve=resolve, notify_unknown=unknown)


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
        min_requests_per_second=base.min_requests_per_second,
    )
