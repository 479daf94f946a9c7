"""Slack messages say what on-call needs, and Retry-After is read however it comes."""

from __future__ import annotations

from imageserver_operator.adapters.slack import retry_after
from imageserver_operator.core.messages import IncidentMessage, blocks


def test_retry_after_is_read_however_it_comes() -> None:
    assert retry_after({"Retry-After": "3"}, 1) == 3
    assert retry_after({"retry-after": ["7"]}, 1) == 7
    assert retry_after({"Retry-After": "soon"}, 2) == 2
    assert retry_after({}, 5) == 5


def test_a_dry_run_says_so_in_the_text_and_the_action() -> None:
    message = IncidentMessage(
        "i", "action", "prod/photos", "Would roll back", action="roll back to 1.0.0", dry_run=True
    )
    assert message.text == "[dry run] prod/photos: Would roll back"
    assert "*Would do (dry run):* roll back to 1.0.0" in str(blocks(message))
