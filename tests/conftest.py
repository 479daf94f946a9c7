"""Shared test setup: the test bed's fixtures (cluster, namespace, prometheus) and imageserver processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import Processes

from imageserver import imaging

pytest_plugins = ["testbed.pytest_plugin"]


@pytest.fixture
def imageserver(tmp_path: Path) -> Iterator[Processes]:
    """Real imageserver processes on 127.0.0.1, started per test and stopped after it."""
    processes = Processes(tmp_path / "processes")
    yield processes
    processes.stop_all()


@pytest.fixture(params=imaging.ENGINES)
def engine(request: pytest.FixtureRequest) -> Iterator[imaging.Engine]:
    """Each rendering engine in turn, in this process: a test that takes it holds both to
    the same promise (the golden tests of `--engine`)."""
    chosen: imaging.Engine = request.param
    imaging.use_engine(chosen)
    yield chosen
    imaging.use_engine("pillow")
