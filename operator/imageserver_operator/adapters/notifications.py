"""Which Slack channel hears of which ImageServer: `spec.notifications.slack` names a channel
and a Secret with the bot token. One queue-backed notifier per token and channel."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from imageserver_operator.adapters.kube import Kube
from imageserver_operator.adapters.slack import SlackNotifier, client
from imageserver_operator.adapters.store import Store
from imageserver_operator.api.models import ImageServerSpec
from imageserver_operator.core.messages import IncidentMessage

log = logging.getLogger(__name__)


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

    async def recall(self, message: IncidentMessage) -> str | None:
        """The incident's thread, from its Postmortem; None when it has none (or no Postmortem)."""
        namespace = message.imageserver.split("/", 1)[0]
        try:
            return await asyncio.to_thread(self.kube.slack_thread, namespace, message.incident)
        except Exception as error:  # no thread known: a new one, never a lost message
            log.warning("could not look up the Slack thread of %s: %s", message.incident, error)
            return None

    async def remember(self, message: IncidentMessage, ts: str, permalink: str) -> None:
        namespace = message.imageserver.split("/", 1)[0]
        try:
            await asyncio.to_thread(
                self.kube.remember_slack_thread, namespace, message.incident, ts, permalink
            )
        except Exception as error:
            log.warning("could not record the Slack thread of %s: %s", message.incident, error)
