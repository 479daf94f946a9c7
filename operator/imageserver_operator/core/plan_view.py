"""The capacity plan as people read it: a table for the terminal, data for -o json|yaml, and
the few lines the ImageServer's status keeps. Pure."""

from __future__ import annotations

from typing import Any

from imageserver_operator.core.capacity import Comparison, Figure, Plan

MARKS = {"under": "UNDER", "ok": "ok", "over": "over"}


def _rows(figures: tuple[Figure, ...]) -> list[tuple[str, ...]]:
    return [(f.name, f.shown, f.arithmetic) for f in figures]


def _grid(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  " + "  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines) + "\n"


def table(name: str, plan: Plan) -> str:
    out = [f"Capacity plan of {name} (unit costs: {plan.unit_costs})\n\nService, at peak\n"]
    out.append(_grid(("figure", "value", "arithmetic"), _rows(plan.service)))
    for dc in plan.datacenters:
        out.append(f"\nDatacenter {dc.name}, at peak with the failure budget spent\n")
        out.append(_grid(("figure", "value", "arithmetic"), _rows(dc.figures)))
    out.append("\nPlan against the spec\n")
    out.append(
        _grid(
            ("resource", "plan", "spec", "verdict"),
            [(c.resource, c.planned, c.spec, f"{MARKS[c.verdict]}: {c.by}") for c in plan.comparisons],
        )
    )
    for note in plan.notes:
        out.append(f"\nNote: {note}\n")
    verdict = (
        f"\nThe spec cannot carry the declared load: {len(plan.short)} resources short.\n"
        if plan.short
        else "\nThe spec carries the declared load with its failure budget.\n"
    )
    out.append(verdict)
    return "".join(out)


def _figure(f: Figure) -> dict[str, Any]:
    return {"name": f.name, "value": f.value, "shown": f.shown, "arithmetic": f.arithmetic}


def _comparison(c: Comparison) -> dict[str, Any]:
    return {"resource": c.resource, "plan": c.planned, "spec": c.spec, "verdict": c.verdict, "by": c.by}


def data(name: str, plan: Plan) -> dict[str, Any]:
    return {
        "imageServer": name,
        "unitCosts": plan.unit_costs,
        "service": [_figure(f) for f in plan.service],
        "datacenters": [
            {"name": dc.name, "share": dc.share, "figures": [_figure(f) for f in dc.figures]}
            for dc in plan.datacenters
        ],
        "comparisons": [_comparison(c) for c in plan.comparisons],
        "short": [c.line() for c in plan.short],
        "notes": list(plan.notes),
        "replicaCapacityRps": plan.replica_capacity_rps,
    }


def status(plan: Plan) -> dict[str, Any]:
    """status.capacity: what the busiest datacenter needs, what is short, and the costs' origin."""
    busiest = max(plan.datacenters, key=lambda dc: dc.share)
    volumes = busiest.figure("storage volumes").shown
    egress = busiest.figure("egress to users").shown
    summary = (
        f"{busiest.name} at peak ({busiest.share:.0%} of it): {busiest.value('frontend pods'):.0f} frontend "
        f"pods, {plan.value('shards'):.0f} shards on {volumes} volumes, egress {egress}"
    )
    return {
        "summary": summary,
        "short": [c.line()[:500] for c in plan.short][:16],
        "replicaCapacityRps": round(plan.replica_capacity_rps, 1),
        "unitCosts": plan.unit_costs,
    }


def condition_message(plan: Plan) -> str:
    if plan.short:
        return "the spec cannot carry spec.capacity: " + "; ".join(c.line() for c in plan.short)
    return "the spec carries spec.capacity with its failure budget"
