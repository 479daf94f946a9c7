"""Which Slack channel hears of which ImageServer: `spec.notifications.slack` names a channel
and a Secret with the bot token. One queue-backed notifier per token and channel."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from imageserver_operator.adapters.kube import Kube
from imageserver_operator.adapters.slack import SlackNotifier, client
from imageserver_operator.adapters.store import Store
from imageserver_operator.api.models import GROUP, ImageServerSpec
from imageserver_operator.core.messages import IncidentMessage

log = logging.getLogger(__name__)
# On an ImageServer: the latest rollout's Slack thread (its conversation, ts and permalink).
SLACK_ROLLOUT_THREAD_ANNOTATION = f"{GROUP}/slack-rollout-thread"


class SlackRouter:
    def __init__(
        self,
        store: Store,
        kube: Kube,
        *,
        base_url: str | None = None,
        make: Callable[[str, str], SlackNotifier] | None = None,
    ) -> None:
        self.store = store
        self.kube = kube
        self.base_url = base_url
        self._make = make or (
            lambda token, channel: SlackNotifier(client(token, self.base_url), channel, threads=self)
        )
        self.notifiers: dict[tuple[str, str], SlackNotifier] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def __call__(self, message: IncidentMessage) -> None:
        namespace, name = message.imageserver.split("/", 1)
        body = self.store.get((namespace, name))
        if body is None:
            return
        try:
            slack = ImageServerSpec.model_validate(body.get("spec", {})).notifications.slack
        except ValueError:
            return
        if slack is None:
            return
        try:
            token = self.kube.secret_value(namespace, slack.token_secret_ref.name, slack.token_secret_ref.key)
        except Exception as error:  # a missing Secret costs the message, never the remediation
            log.error("no Slack token for %s: %s", message.imageserver, error)
            return
        notifier = self.notifiers.get((token, slack.channel))
        if notifier is None:
            notifier = self._make(token, slack.channel)
            self.notifiers[(token, slack.channel)] = notifier
            self._tasks.append(asyncio.get_running_loop().create_task(notifier.run()))
        notifier.post(message)

    async def recall(self, message: IncidentMessage, conversation: str) -> str | None:
        """A rollout's thread from its ImageServer (the latest rollout's is kept), an incident's
        from its Postmortem; None when none is known."""
        namespace, name = message.imageserver.split("/", 1)
        if _is_rollout(message, conversation):
            body = self.store.get((namespace, name)) or {}
            kept = rollout_thread_of(body)
            return kept.get("ts") if kept.get("conversation") == conversation else None
        try:
            return await asyncio.to_thread(self.kube.slack_thread, namespace, conversation)
        except Exception as error:  # no thread known: a new one, never a lost message
            log.warning("could not look up the Slack thread of %s: %s", conversation, error)
            return None

    async def remember(self, message: IncidentMessage, conversation: str, ts: str, permalink: str) -> None:
        namespace, name = message.imageserver.split("/", 1)
        try:
            if _is_rollout(message, conversation):
                kept = json.dumps({"conversation": conversation, "ts": ts, "permalink": permalink})
                # Its only writer, and no precondition: it changes nothing the loops decide on.
                await asyncio.to_thread(
                    self.kube.annotate, namespace, name, {SLACK_ROLLOUT_THREAD_ANNOTATION: kept}
                )
                return
            await asyncio.to_thread(self.kube.remember_slack_thread, namespace, conversation, ts, permalink)
        except Exception as error:
            log.warning("could not record the Slack thread of %s: %s", conversation, error)


def _is_rollout(message: IncidentMessage, conversation: str) -> bool:
    return conversation == message.within or (message.rollout and conversation == message.incident)


def rollout_thread_of(body: Mapping[str, Any]) -> dict[str, str]:
    """The latest rollout's Slack thread, as the ImageServer keeps it ({} when none)."""
    raw = ((body.get("metadata") or {}).get("annotations") or {}).get(SLACK_ROLLOUT_THREAD_ANNOTATION, "")
    try:
        kept = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return {k: str(v) for k, v in kept.items()} if isinstance(kept, dict) else {}
