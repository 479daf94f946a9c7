"""Slack notifications: a queue that never blocks or delays remediation, one thread per
incident, retries through rate limits, server errors and outages, in order.

slack-sdk's own retry handlers absorb short blips (429 with Retry-After, 500/503); a longer
outage keeps the message at the head of the queue and retries with backoff, so later
messages (the final "resolved" included) are delivered after it, in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from imageserver_operator.core.messages import IncidentMessage, blocks

log = logging.getLogger(__name__)
RETRYABLE = {429, 500, 502, 503, 504}


def client(token: str, base_url: str | None = None) -> AsyncWebClient:
    handlers = [
        AsyncRateLimitErrorRetryHandler(max_retry_count=3),
        AsyncServerErrorRetryHandler(max_retry_count=2),
    ]
    if base_url:
        return AsyncWebClient(token=token, base_url=base_url, timeout=10, retry_handlers=handlers)
    return AsyncWebClient(token=token, timeout=10, retry_handlers=handlers)


def retry_after(headers: Mapping[str, Any], default: float) -> float:
    """Seconds from a Retry-After header (a string or a list of them), else the default."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        return float(value) if value is not None else default
    except (TypeError, ValueError):
        return default


class ThreadBook(Protocol):
    """Where a conversation's thread is kept beyond this process (an incident's in its
    Postmortem, a rollout's on its ImageServer), so whichever replica leads next posts into
    the same thread."""

    async def recall(self, message: IncidentMessage, conversation: str) -> str | None: ...

    async def remember(
        self, message: IncidentMessage, conversation: str, ts: str, permalink: str
    ) -> None: ...


class SlackNotifier:
    def __init__(
        self,
        web: AsyncWebClient,
        channel: str,
        *,
        max_backoff: float = 60.0,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        threads: ThreadBook | None = None,
    ) -> None:
        self.web = web
        self.channel = channel
        self.max_backoff = max_backoff
        self._sleep = sleep
        self.queue: asyncio.Queue[IncidentMessage] = asyncio.Queue()
        self.threads: dict[str, str] = {}  # conversation (incident, rollout) → thread ts
        self.permalinks: dict[str, str] = {}
        self.delivered = 0
        self.book = threads

    def post(self, message: IncidentMessage) -> None:
        """Never waits: the message is queued and sent by `run()`."""
        self.queue.put_nowait(message)

    async def run(self) -> None:
        while True:
            message = await self.queue.get()
            backoff = 1.0
            while True:
                try:
                    await self._send(message)
                    self.delivered += 1
                    break
                except SlackApiError as error:
                    status = error.response.status_code
                    if status not in RETRYABLE:
                        log.error("Slack refused a message for good: %s", error.response.get("error"))
                        break
                    wait = retry_after(error.response.headers, backoff) if status == 429 else backoff
                except Exception as error:  # unreachable, or anything else: the queue must survive it
                    log.warning("Slack message not sent, retrying: %r", error)
                    wait = backoff
                await self._sleep(min(wait, self.max_backoff))
                backoff = min(backoff * 2, self.max_backoff)

    async def _thread(self, message: IncidentMessage, conversation: str) -> str | None:
        thread = self.threads.get(conversation)
        if thread is None and self.book is not None:
            thread = await self.book.recall(message, conversation)  # another replica's, before a failover
            if thread:
                self.threads[conversation] = thread
        return thread

    async def _send(self, message: IncidentMessage) -> None:
        conversation = message.incident
        thread = await self._thread(message, conversation)
        adopted = None  # the thread of `within`, which this conversation begins in
        if thread is None and message.within:
            adopted = thread = await self._thread(message, message.within)
        response = await self.web.chat_postMessage(
            channel=self.channel,
            text=message.text,
            blocks=blocks(message),
            thread_ts=thread,
            reply_broadcast=True if thread and message.broadcast else None,
        )
        if thread is not None and adopted is None:
            return
        ts = thread or str(response["ts"])
        self.threads[conversation] = ts
        link = self.permalinks.get(message.within) if adopted else None
        link = link or await self._permalink(str(response["channel"]), ts)
        if link:
            self.permalinks[conversation] = link
        if self.book is not None:
            await self.book.remember(message, conversation, ts, link or "")

    async def _permalink(self, channel: str, ts: str) -> str | None:
        """Nice to have for the Postmortem; the message itself is already out."""
        try:
            link = await self.web.chat_getPermalink(channel=channel, message_ts=ts)
            return str(link["permalink"])
        except SlackApiError as error:
            log.warning("no permalink for the thread: %s", error.response.get("error"))
            return None
