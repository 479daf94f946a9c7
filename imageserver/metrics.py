"""Prometheus metrics of one imageserver process, in its own registry.

The request counter and latency histogram are what the SLOs are computed from: availability
from `code`, latency from the bucket at the SLO threshold (hence the fixed bucket list).
`datacenter` and `revision` label every request so burn can be attributed to either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from imageserver.admission import Gate
    from imageserver.blobstore import BlobStore
    from imageserver.handoff import Hints

# The routes users' requests and the SLOs are about, by role, and the answers primed at 0.
ROUTES = {"frontend": ("upload", "original", "variant"), "storage": ("blob_get", "blob_put")}
PRIMED_CODES = (200, 500, 503)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, datacenter: str, revision: str, role: str) -> None:
        self.registry = CollectorRegistry()
        self.labels = {"datacenter": datacenter, "revision": revision}
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        reg = self.registry
        self.requests = Counter(
            "imageserver_http_requests",
            "HTTP requests answered, by route and status code.",
            ["route", "code", "datacenter", "revision"],
            registry=reg,
        )
        self.duration = Histogram(
            "imageserver_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["route", "datacenter", "revision"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.storage_objects = Gauge(
            "imageserver_storage_objects", "Blobs held by this storage node.", registry=reg
        )
        self.storage_bytes = Gauge(
            "imageserver_storage_bytes", "Bytes held by this storage node.", registry=reg
        )
        self.disk_free = Gauge(
            "imageserver_storage_free_bytes",
            "Bytes this storage node may still write on its volume.",
            registry=reg,
        )
        self.disk_size = Gauge(
            "imageserver_storage_capacity_bytes", "Size of this storage node's volume.", registry=reg
        )
        self.replication_pending = Gauge(
            "imageserver_replication_pending",
            "Cross-datacenter copies this storage node owes (one per image and datacenter), kept on disk.",
            registry=reg,
        )
        self.replication_lag = Gauge(
            "imageserver_replication_lag_seconds",
            "Age of the oldest cross-datacenter copy this storage node owes; 0 when none.",
            registry=reg,
        )
        self.replications = Counter(
            "imageserver_replications",
            "Cross-datacenter deliveries by result: ok, retry (a datacenter backed off), dropped "
            "(its datacenter left the topology), lost (the owed original is gone from disk).",
            ["result"],
            registry=reg,
        )
        self.rebalance_remaining = Gauge(
            "imageserver_rebalance_remaining",
            "Images this storage node holds whose owner is another shard (at the last pass).",
            registry=reg,
        )
        self.rebalance_moved = Counter(
            "imageserver_rebalance_moved",
            "Images sent to their owner's write quorum and removed here.",
            registry=reg,
        )
        self.rebalance_errors = Counter(
            "imageserver_rebalance_errors",
            "Images that could not reach their owner's quorum yet (tried again), and failed passes.",
            registry=reg,
        )
        self.unauthenticated_writes = Counter(
            "imageserver_unauthenticated_writes",
            "Writes taken without a storage token (only with --accept-unauthenticated-writes).",
            registry=reg,
        )
        self.corrupt = Counter(
            "imageserver_corrupt_variants",
            "Stored variants that failed their seal (set aside by a storage node, or caught by a "
            "frontend) and were rendered again.",
            registry=reg,
        )
        self.repairs = Counter(
            "imageserver_read_repairs", "Blobs written back to replicas that missed them.", registry=reg
        )
        self.topology_generation = Gauge(
            "imageserver_topology_generation", "Generation of the shard map this process uses.", registry=reg
        )
        self.quorum_failures = Counter(
            "imageserver_write_quorum_failures",
            "Uploads refused because too few replicas acknowledged.",
            registry=reg,
        )
        self.cache_hits = Counter(
            "imageserver_variant_cache_hits", "On-demand variants served from memory.", registry=reg
        )
        self.cache_misses = Counter(
            "imageserver_variant_cache_misses", "On-demand variants rendered.", registry=reg
        )
        self.faults = Counter(
            "imageserver_faults_injected",
            "Requests failed or delayed on purpose (game days).",
            ["kind"],
            registry=reg,
        )
        self.shed = Counter(
            "imageserver_shed_requests",
            "Requests refused by admission control, by reason (body_timeout, client_concurrency, "
            "memory_queue_full, memory_wait, memory_exceeds_capacity, render_queue_full, render_wait, ...).",
            ["reason"],
            registry=reg,
        )
        self.admission_in_use = Gauge(
            "imageserver_admission_in_use",
            "What admitted work holds of a gate: bytes of memory, or render threads.",
            ["gate"],
            registry=reg,
        )
        self.admission_capacity = Gauge(
            "imageserver_admission_capacity",
            "A gate's capacity: the memory budget in bytes, or the render threads.",
            ["gate"],
            registry=reg,
        )
        self.admission_waiting = Gauge(
            "imageserver_admission_queue_depth", "Requests waiting at a gate.", ["gate"], registry=reg
        )
        self.renders = Counter(
            "imageserver_renders",
            "Renders a thread started, by kind (upload: the allowlisted sizes; variant: on demand).",
            ["kind"],
            registry=reg,
        )
        self.abandoned = Counter(
            "imageserver_admission_abandoned",
            "Requests whose client hung up while they waited at a gate: work never started.",
            ["gate"],
            registry=reg,
        )
        info = Gauge(
            "imageserver_build_info",
            "Constant 1, labelled with role, datacenter and revision.",
            ["role", "datacenter", "revision"],
            registry=reg,
        )
        info.labels(role=role, **self.labels).set(1)
        # Series that exist from the start, at 0: Prometheus' rate() sees nothing of a counter
        # before its second sample, so a new process's first errors (a canary's, which is all
        # new processes) would go unseen by the SLO rules and the canary verdict.
        for route in ROUTES.get(role, ()):
            for code in PRIMED_CODES:
                self.observe(route, code, None)

    def watch_store(self, store: BlobStore) -> None:
        """Report the store's counts at every scrape."""
        self.storage_objects.set_function(lambda: store.count)
        self.storage_bytes.set_function(lambda: store.bytes)
        self.disk_free.set_function(lambda: store.disk()[0])
        self.disk_size.set_function(lambda: store.disk()[1])

    def watch_hints(self, hints: Hints) -> None:
        self.replication_pending.set_function(hints.owed)
        self.replication_lag.set_function(hints.lag)

    def watch_gate(self, gate: Gate) -> None:
        self.admission_in_use.labels(gate=gate.name).set(gate.in_use)
        self.admission_capacity.labels(gate=gate.name).set(gate.capacity)
        self.admission_waiting.labels(gate=gate.name).set(gate.waiting)

    def count_abandoned(self, gate: Gate) -> None:
        self.abandoned.labels(gate=gate.name).inc()

    def observe(self, route: str, code: int, seconds: float | None) -> None:
        """One answer (`seconds` None: none, the series created at 0)."""
        # Label lookups cost more than the increments on the hot path: keep the children.
        children = self._children.get((route, code))
        if children is None:
            children = (
                self.requests.labels(route=route, code=str(code), **self.labels),
                self.duration.labels(route=route, **self.labels),
            )
            self._children[(route, code)] = children
        if seconds is not None:
            children[0].inc()
            children[1].observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
