"""What `make demo` leaves in demo-out/: the summary table and the plot.

Times are Unix seconds; the plot shows them as seconds since the traffic started.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

Series = Mapping[str, Sequence[tuple[float, float]]]  # label → (time, value)


@dataclass
class Incident:
    """One played incident, as the demo watched it."""

    title: str
    started: float  # the fault was injected
    errors: float | None = None  # Prometheus first saw a 5xx
    detected: float | None = None  # the operator opened the incident
    mitigated: float | None = None  # rollback or drain in effect
    resolved: float | None = None  # the incident closed
    action: str = ""
    postmortem: str = ""
    budget_spent_percent: float | None = None
    failed_requests: int = 0

    def seconds(self, until: float | None) -> str:
        origin = self.errors or self.started
        return "—" if until is None else f"{until - origin:.0f} s"


def summary(incidents: Sequence[Incident], images: int, lost: int) -> str:
    lines = [
        "| incident | action | time to detect | time to mitigate | error budget spent | requests failed "
        "| images lost |",
        "|---|---|---|---|---|---|---|",
    ]
    for incident in incidents:
        spent = "—" if incident.budget_spent_percent is None else f"{incident.budget_spent_percent:.2f} %"
        cells = (
            incident.title,
            incident.action or "none",
            incident.seconds(incident.detected),
            incident.seconds(incident.mitigated),
            spent,
            str(incident.failed_requests),
            f"{lost} of {images}",
        )
        lines.append(f"| {' | '.join(cells)} |")
    lines.append("")
    lines.append(
        "Times count from the first 5xx Prometheus scraped. "
        "Budget: the error budget of the SLO window (3 days here)."
    )
    return "\n".join(lines)


def plot(
    path: Path,
    *,
    origin: float,
    users: Series,
    revisions: Series,
    burn: Series,
    actions: Sequence[tuple[float, str]],
) -> None:
    """Three panels over time: error ratio per datacenter (users' view), error ratio per
    revision and burn rate per datacenter (Prometheus), the operator's actions marked."""
    import matplotlib  # noqa: PLC0415 - only the demo needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(3, 1, figsize=(11, 8.5), sharex=True)
    panels = (
        (axes[0], users, "error ratio per datacenter\n(what users saw, 5 s)", False),
        (axes[1], revisions, "error ratio per revision\n(Prometheus, 15 s)", False),
        (axes[2], burn, "burn rate per datacenter\n(5m window, x budget)", True),
    )
    for axis, series, title, log in panels:
        for label, points in sorted(series.items()):
            if points:
                xs, ys = zip(*((t - origin, v) for t, v in points), strict=True)
                axis.plot(xs, ys, label=label, linewidth=1.6)
        axis.set_ylabel(title, fontsize=9)
        axis.grid(alpha=0.3)
        if log:
            axis.set_yscale("symlog", linthresh=1)
            axis.axhline(14.4, color="crimson", linestyle=":", linewidth=1)
            axis.text(0, 14.4, " page: 14.4x", color="crimson", fontsize=8, va="bottom")
        if series:
            axis.legend(loc="upper right", fontsize=8)
        for when, _ in actions:
            axis.axvline(when - origin, color="black", linestyle="--", linewidth=0.9, alpha=0.7)
    for when, what in actions:
        axes[0].annotate(
            what,
            (when - origin, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=8,
            va="top",
            ha="right",
        )
    axes[-1].set_xlabel("seconds since traffic started")
    figure.suptitle("make demo: a bad rollout, then a sick datacenter — and what the operator did")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
