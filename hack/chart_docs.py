"""The values table of the chart's README, generated from values.schema.json and values.yaml
(one source of truth; `tests/unit/chart` fails when the README drifts).

    python hack/chart_docs.py          # rewrite the table in charts/imageserver-operator/README.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "imageserver-operator"
BEGIN, END = "<!-- values:begin -->", "<!-- values:end -->"


def _rows(schema: dict[str, Any], values: Any, prefix: str = "") -> list[tuple[str, str, str, str]]:
    rows = []
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        value = values.get(key) if isinstance(values, dict) else None
        if sub.get("type") == "object" and "properties" in sub:
            rows += _rows(sub, value, f"{path}.")
            continue
        kind = sub.get("type") or " \\| ".join(json.dumps(v) for v in sub.get("enum", []))
        rows.append((path, kind, json.dumps(value), sub.get("description", "")))
    return rows


def table() -> str:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    lines += [f"| `{k}` | {t} | `{d}` | {text} |" for k, t, d, text in _rows(schema, values)]
    return "\n".join(lines)


def readme_with_table(readme: str) -> str:
    head, _, rest = readme.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main() -> int:
    path = CHART / "README.md"
    path.write_text(readme_with_table(path.read_text()))
    print(f"wrote the values table into {path.relative_to(CHART.parents[1])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
