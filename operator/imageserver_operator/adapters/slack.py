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
    """Where an incident's thread is kept beyond this process (its Postmortem), so whichever
    replica leads next posts into the same thread."""

    async def recall(self, message: IncidentMessage) -> str | None: ...

    async def remember(self, message: IncidentMessage, ts: str, permalink: str) -> None: ...


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
        self.threads: dict[str, str] = {}  # incident → thread ts
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

    async def _send(self, message: IncidentMessage) -> None:
        thread = self.threads.get(message.incident)
        if thread is None and self.book is not None:
            thread = await self.book.recall(message)  # opened by another replica before a failover
            if thread:
                self.threads[message.incident] = thread
        response = await self.web.chat_postMessage(
            channel=self.channel,
            text=message.text,
            blocks=blocks(message),
            thread_ts=thread,
        )
        if thread is None:
            ts = str(response["ts"])
            self.threads[message.incident] = ts
            try:  # nice to have for the Postmortem; the message itself is already out
                link = await self.web.chat_getPermalink(channel=str(response["channel"]), message_ts=ts)
                self.permalinks[message.incident] = str(link["permalink"])
            except SlackApiError as error:
                log.warning("no permalink for the incident thread: %s", error.response.get("error"))
            if self.book is not None:
                await self.book.remember(message, ts, self.permalinks.get(message.incident, ""))
