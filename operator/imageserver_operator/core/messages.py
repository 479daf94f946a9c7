"""What on-call reads in Slack: one Block Kit message per incident event. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Stage = Literal["opened", "action", "resolved", "unknown", "rollout", "capacity"]
ICONS = {
    "opened": ":rotating_light:",
    "action": ":robot_face:",
    "resolved": ":white_check_mark:",
    "unknown": ":grey_question:",
    "rollout": ":ship:",
    "capacity": ":bar_chart:",
}


def rollout_thread(imageserver: str, version: str) -> str:
    """The conversation of one rollout: its steps, verdicts and the incident of a failed wave."""
    return f"{imageserver}-rollout-{version}"


@dataclass(frozen=True)
class IncidentMessage:
    incident: str  # the conversation: one Slack thread per incident (or rollout)
    stage: Stage
    imageserver: str  # namespace/name
    headline: str
    reason: str = ""
    datacenter: str = ""
    revision: str = ""
    burn: Mapping[str, float] = field(default_factory=dict)
    budget_spent_percent: float | None = None
    action: str = ""
    runbook: str = ""
    postmortem: str = ""
    dry_run: bool = False
    # A conversation without a thread yet begins in this one's (an incident in the thread of
    # the rollout whose wave it stopped), so on-call reads the whole story in one place.
    within: str = ""
    broadcast: bool = False  # a reply someone must act on: also shown in the channel
    rollout: bool = False  # the conversation is a rollout's (its thread kept on the ImageServer)

    @property
    def text(self) -> str:
        """The notification text (and what clients without Block Kit show)."""
        prefix = "[dry run] " if self.dry_run else ""
        return f"{prefix}{self.imageserver}: {self.headline}"


def blocks(message: IncidentMessage) -> list[dict[str, Any]]:
    facts = [
        ("ImageServer", message.imageserver),
        ("Datacenter", message.datacenter or "all"),
        ("Revision", message.revision or "—"),
        ("Burn rate", ", ".join(f"{v:.1f}x over {w}" for w, v in message.burn.items()) or "—"),
        (
            "Budget spent",
            "—" if message.budget_spent_percent is None else f"{message.budget_spent_percent:.1f} %",
        ),
        ("Postmortem", f"`{message.postmortem}`" if message.postmortem else "—"),
    ]
    out: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"{message.headline}"[:150]}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in facts]},
    ]
    if message.action:
        verb = "Would do (dry run)" if message.dry_run else "Action"
        out.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"{ICONS[message.stage]} *{verb}:* {message.action}"},
            }
        )
    if message.reason:
        out.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Why:* {message.reason}"}})
    if message.runbook:
        out.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"Runbook: <{message.runbook}>"}]}
        )
    return out
