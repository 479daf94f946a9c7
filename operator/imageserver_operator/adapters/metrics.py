"""The operator's own Prometheus metrics: what it saw, decided and did."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from imageserver_operator.core.policy import Action, Observation


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        reg = self.registry
        self.actions = Counter(
            "imageserver_operator_actions",
            "Remediation actions decided, by kind; executed=false for dryRun, off or paused.",
            ["kind", "executed"],
            registry=reg,
        )
        self.decision_seconds = Histogram(
            "imageserver_operator_decision_seconds",
            "Time from observations to executed decision, per ImageServer.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=reg,
        )
        self.burn = Gauge(
            "imageserver_operator_burn_rate",
            "Burn rates seen in the last SLO cycle.",
            ["namespace", "imageserver", "scope", "window"],
            registry=reg,
        )
        self.reconciles = Counter(
            "imageserver_operator_reconciles", "Reconciles, by result.", ["result"], registry=reg
        )
        self.slo_cycles = Counter(
            "imageserver_operator_slo_cycles", "SLO evaluation cycles, by result.", ["result"], registry=reg
        )

    def saw(self, namespace: str, name: str, seen: Observation) -> None:
        scopes = {"service": seen.service}
        scopes.update({f"datacenter:{dc}": burn for dc, burn in seen.by_datacenter.items()})
        scopes.update({f"revision:{rev}": burn for rev, burn in seen.by_revision.items()})
        for scope, burn in scopes.items():
            for window, value in burn.items():
                self.burn.labels(namespace=namespace, imageserver=name, scope=scope, window=window).set(value)

    def decided(self, action: Action) -> None:
        self.actions.labels(kind=action.kind, executed=str(action.execute).lower()).inc()
