"""Crash points for tests, after etcd's gofail: with IMAGESERVER_OPERATOR_FAILPOINT=NAME the
process kills itself with SIGKILL when it reaches the point NAME, so a test can prove that a
crash there loses nothing and repeats nothing. Unset (always, outside tests): no effect.
"""

from __future__ import annotations

import os
import signal

ENV = "IMAGESERVER_OPERATOR_FAILPOINT"
AFTER_RECORD = "after-record"  # an action is recorded on the ImageServer, not yet taken


def reach(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
