"""Real imageserver processes on 127.0.0.1, started per test and stopped after it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import Processes


@pytest.fixture
def imageserver(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path / "processes")
    yield processes
    processes.stop_all()
