"""Slack through slack-sdk against a local Slack Web API stub: threads, retries, outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from imageserver_operator.adapters.slack import SlackNotifier, client
from imageserver_operator.core.messages import IncidentMessage
from testbed.slack_stub import SlackStub


@pytest.fixture
def stub() -> Iterator[SlackStub]:
    with SlackStub() as running:
        yield running


@pytest.fixture
async def notifier(stub: SlackStub) -> AsyncIterator[SlackNotifier]:
    sender = SlackNotifier(client("xoxb-test", stub.base_url), "#imageserver-oncall", max_backoff=0.2)
    task = asyncio.create_task(sender.run())
    yield sender
    task.cancel()


def message(incident: str, stage: str, headline: str, **extra: object) -> IncidentMessage:
    return IncidentMessage(incident, stage, "prod/photos", headline, **extra)  # type: ignore[arg-type]


async def delivered(notifier: SlackNotifier, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while notifier.delivered < count:
        assert time.monotonic() < deadline, f"only {notifier.delivered} of {count} delivered"
        await asyncio.sleep(0.02)


async def test_one_thread_per_incident_with_the_facts_on_call_needs(
    stub: SlackStub, notifier: SlackNotifier
) -> None:
    notifier.post(
        message(
            "inc-1",
            "opened",
            "Revision 1.1.0 burns the error budget",
            revision="1.1.0",
            burn={"5m": 480.0, "1h": 40.0},
            budget_spent_percent=2.5,
            runbook="runbooks/slo-burn-page.md",
            postmortem="photos-20261121-1200",
        )
    )
    notifier.post(message("inc-2", "opened", "dc-b burns the error budget", datacenter="dc-b"))
    notifier.post(
        message(
            "inc-1",
            "action",
            "Rolled back to 1.0.0",
            action="roll back to 1.0.0",
            reason="1.1.0 burns 480x over 5m; 1.0.0 did not",
        )
    )
    notifier.post(message("inc-1", "resolved", "Burn back under budget"))
    await delivered(notifier, 4)
    posted = stub.messages()
    assert [p["text"] for p in posted] == [
        "prod/photos: Revision 1.1.0 burns the error budget",
        "prod/photos: dc-b burns the error budget",
        "prod/photos: Rolled back to 1.0.0",
        "prod/photos: Burn back under budget",
    ]
    first_ts = notifier.threads["inc-1"]
    assert "thread_ts" not in posted[0] and "thread_ts" not in posted[1]
    assert posted[2]["thread_ts"] == first_ts and posted[3]["thread_ts"] == first_ts
    fields = " ".join(f["text"] for f in posted[0]["blocks"][1]["fields"])
    for fact in (
        "*ImageServer*\nprod/photos",
        "*Revision*\n1.1.0",
        "480.0x over 5m",
        "2.5 %",
        "`photos-20261121-1200`",
    ):
        assert fact in fields
    assert "runbooks/slo-burn-page.md" in str(posted[0]["blocks"][-1])
    assert "*Why:* 1.1.0 burns 480x over 5m; 1.0.0 did not" in str(posted[2]["blocks"])
    assert notifier.permalinks["inc-1"].startswith("https://slack.invalid/archives/")


async def test_posting_never_waits_and_rate_limits_are_retried(
    stub: SlackStub, notifier: SlackNotifier
) -> None:
    stub.fail(429, count=5, retry_after=1)
    started = time.monotonic()
    for i in range(3):
        notifier.post(message("inc-9", "action" if i else "opened", f"step {i}"))
    assert time.monotonic() - started < 0.01  # remediation is never held up by Slack
    await delivered(notifier, 3, timeout=20)
    assert [p["text"] for p in stub.messages()] == [f"prod/photos: step {i}" for i in range(3)]
    assert sum(1 for c in stub.calls if c.status == 429) == 5


async def test_after_an_outage_every_message_arrives_in_order(
    stub: SlackStub, notifier: SlackNotifier
) -> None:
    stub.down = True
    notifier.post(message("inc-5", "opened", "dc-c burns"))
    notifier.post(message("inc-5", "action", "Drained dc-c"))
    notifier.post(message("inc-5", "resolved", "Resolved"))
    await asyncio.sleep(1.0)
    assert notifier.delivered == 0 and any(c.status == 500 for c in stub.calls)
    stub.down = False
    await delivered(notifier, 3)
    assert [p["text"] for p in stub.messages()] == [
        "prod/photos: dc-c burns",
        "prod/photos: Drained dc-c",
        "prod/photos: Resolved",
    ]


class Book:
    """Where threads outlive a notifier (the ImageServer, the Postmortem), as a dict."""

    def __init__(self) -> None:
        self.kept: dict[str, tuple[str, str]] = {}

    async def recall(self, _message: IncidentMessage, conversation: str) -> str | None:
        return self.kept.get(conversation, ("", ""))[0] or None

    async def remember(self, _message: IncidentMessage, conversation: str, ts: str, permalink: str) -> None:
        self.kept[conversation] = (ts, permalink)


async def test_an_incident_a_wave_opens_is_told_in_the_rollouts_thread_across_leaders(
    stub: SlackStub,
) -> None:
    """One thread per rollout: its start and promotions, then the incident its failed wave
    opened (shown in the channel too, on-call must look), its rollback and its end, even
    when another replica leads by then."""
    book = Book()
    first = SlackNotifier(client("xoxb-test", stub.base_url), "#oncall", max_backoff=0.2, threads=book)
    task = asyncio.create_task(first.run())
    first.post(message("photos-rollout-1.1.0", "rollout", "rolling out 1.1.0: wave 1", rollout=True))
    within = {"within": "photos-rollout-1.1.0", "broadcast": True}
    first.post(message("photos-20261206-1200", "opened", "photos is burning its error budget", **within))
    await delivered(first, 2)
    task.cancel()
    second = SlackNotifier(client("xoxb-test", stub.base_url), "#oncall", max_backoff=0.2, threads=book)
    task = asyncio.create_task(second.run())
    second.post(message("photos-20261206-1200", "action", "Rolled back 1.0.0"))
    second.post(message("photos-20261206-1200", "resolved", "Resolved: burn back under budget"))
    await delivered(second, 2)
    task.cancel()
    started, opened, *rest = stub.messages()
    assert "thread_ts" not in started
    thread = book.kept["photos-rollout-1.1.0"][0]
    assert [m.get("thread_ts") for m in (opened, *rest)] == [thread] * 3
    assert opened.get("reply_broadcast") in (True, "1", "true") and "reply_broadcast" not in rest[0]
    # The incident's Postmortem gets the rollout thread and its permalink.
    assert book.kept["photos-20261206-1200"] == book.kept["photos-rollout-1.1.0"]
    assert book.kept["photos-20261206-1200"][1].startswith("https://slack.invalid/archives/")
