"""Crash points for tests, after etcd's gofail: with IMAGESERVER_OPERATOR_FAILPOINT=NAME the
process kills itself with SIGKILL when it reaches the point NAME (or, at a stall point,
stops there for good while its other tasks go on), so a test can prove that a crash there
loses nothing and repeats nothing. Unset (always, outside tests): no effect.
"""

from __future__ import annotations

import asyncio
import os
import signal

ENV = "IMAGESERVER_OPERATOR_FAILPOINT"
AFTER_RECORD = "after-record"  # an action is recorded on the ImageServer, not yet taken
# An incident is opened and told; its actions are not yet taken. The SLO loop stops there and
# the lease is still renewed: a test kills the leader when it likes (a failover mid-incident).
AFTER_OPEN = "after-open"


def reach(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


async def stall(name: str) -> None:
    if os.environ.get(ENV) == name:
        await asyncio.Event().wait()
