"""`imageserver-operator promote|abort|rollback NAME`: people move a rollout on the path the
SLO loop uses (status.rollout, its field manager, a resourceVersion precondition), never
through the spec, which stays the user's (or their GitOps tool's)."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from imageserver_operator.adapters.kube import SLO_FIELD_MANAGER, Kube
from imageserver_operator.core import engine, rollout


def command(
    kube: Kube,
    namespace: str,
    name: str,
    verb: str,
    who: str,
    *,
    clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    attempts: int = 5,
) -> str:
    """Read, decide, write onto the version read; on a conflict (the SLO loop wrote in
    between) decided again. Raises `rollout.Refused` with a message for the person."""
    for _ in range(attempts):
        body: dict[str, Any] = kube.get_imageserver(namespace, name)
        subject = engine.Subject.of(body)
        now = clock()
        after, note = rollout.command(subject.spec, subject.rollout, verb, now, who)
        version = body["metadata"].get("resourceVersion")
        status = engine.commanded(subject, after, now)
        if kube.apply_status(namespace, name, status, SLO_FIELD_MANAGER, version) is None:
            continue
        kube.event(body, "Warning" if note.warning else "Normal", note.reason, note.message)
        return note.message
    raise rollout.Refused(f"{namespace}/{name} kept changing; tried {attempts} times, try again")
