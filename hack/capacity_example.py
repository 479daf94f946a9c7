"""The README's capacity worked example: the plan printed under its manifest, from the shipped
unit costs (one source of truth; `tests/unit/operator/test_capacity_plan.py` fails when the
README drifts, for example after `make bench-capacity` measured new costs).

    python hack/capacity_example.py    # rewrite the plan under the manifest in README.md
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from imageserver_operator.api.models import spec_from
from imageserver_operator.api.unit_costs import measured
from imageserver_operator.core import plan_view
from imageserver_operator.core.capacity import plan

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "<!-- capacity-example -->"
PLAN = re.compile(r"```\nCapacity plan of .*?```", re.DOTALL)


def rewritten(text: str) -> str:
    head, tail = text.split(MARK, 1)
    manifest = re.search(r"```yaml\n(.*?)```", tail, re.DOTALL)
    if manifest is None:
        raise SystemExit(f"no yaml manifest after {MARK} in README.md")
    body = yaml.safe_load(manifest.group(1))
    table = plan_view.table(body["metadata"]["name"], plan(spec_from(body["spec"]), measured()))
    block = f"```\n{table}```"
    if not PLAN.search(tail):
        raise SystemExit(f"no plan block (```, then a line 'Capacity plan of …') after {MARK} in README.md")
    tail = PLAN.sub(lambda _: block, tail, count=1)
    return head + MARK + tail


def main() -> None:
    text = README.read_text()
    new = rewritten(text)
    if new != text:
        README.write_text(new)
        print("wrote the capacity example's plan into README.md")


if __name__ == "__main__":
    main()
