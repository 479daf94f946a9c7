"""One machine has one set of real nodes (fixed namespace, addresses, cgroups): whose
`down()` removes them, by the owner record."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.nodes import claims

MINE = Path("/work/a/.cluster")
OTHER = Path("/tmp/pytest/private/.cluster")

CASES = [
    # (what, holder, holder has state, my node processes, leftovers, mine to remove)
    ("nothing anywhere", None, False, False, False, False),
    ("my nodes running", MINE, True, True, True, True),
    ("my nodes' leftovers after a kill -9", MINE, True, False, True, True),
    ("another live cluster's nodes: never touched", OTHER, True, False, True, False),
    ("another live cluster's, even if my state names node processes", OTHER, True, True, True, False),
    ("a killed run's leftovers, its state gone: anyone cleans them", OTHER, False, False, True, True),
    ("leftovers with no owner record", None, False, False, True, True),
]


@pytest.mark.parametrize(
    ("what", "holder", "has_state", "processes", "leftovers", "mine"), CASES, ids=[c[0] for c in CASES]
)
def test_who_removes_the_real_nodes(
    what: str, holder: Path | None, has_state: bool, processes: bool, leftovers: bool, mine: bool
) -> None:
    assert claims(MINE, holder, holder_has_state=has_state, processes=processes, leftovers=leftovers) is mine
