"""The capacity plan (NALSD): from the load an ImageServer declares (spec.capacity), its SLOs
and the measured per-unit costs, the bill of materials of every datacenter, each figure with
the arithmetic it came from, and how the spec compares with it. Pure.

The model, in the order the workshop reasons:
- CPU: each request class costs CPU seconds by the unit costs (an upload renders every
  allowlisted variant, each costed as a full render: an upper bound, the real path decodes
  once); a datacenter's frontends carry, at peak, the share of traffic its weight gives it
  after the heaviest `failureBudget.datacenters` others are lost.
- Latency: each core is a queue (M/M/1): on a core busy a fraction u of the time, a request
  of CPU time s takes longer than t with probability exp(-t (1 - u) / s). Every class of
  request with load (an on-demand read a cache hit or a render) meets the latency objective
  on its own: exp(-T (1 - u) / s) <= 1 - objective, so u <= 1 - s ln(1 / (1 - objective)) / T
  for the slowest such class, and no higher than the target. (Weighting the classes by their
  traffic would let cheap requests buy latency for slow ones: more load, fewer machines.)
- Storage: every datacenter holds every image on `replicas` volumes of one shard (rendezvous
  hashing spreads ids evenly: with millions of images a shard's share is within 0.1 % of
  1/shards); shards are as many as the writes need (fsync'd objects and bytes per second
  of a volume) and as the data needs (largest volume, less its headroom).
- Disk: the uploads of the retention period at the average load, growing continuously:
  integral of (1 + g)^t over the years = ((1 + g)^Y - 1) / ln(1 + g).
Not planned: storage pods' CPU and memory (not measured yet) and reads served by storage
(allowlisted variants are assumed answered from the frontends' caches).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from imageserver_operator.api.models import CapacitySpec, DatacenterSpec, ImageServerSpec
from imageserver_operator.api.quantities import parse, show_bytes, show_rate, volume_size
from imageserver_operator.api.unit_costs import UnitCosts

YEAR_SECONDS = 365.25 * 24 * 3600
# The frontend refuses larger uploads (imageserver.imaging.Limits.max_bytes; a test pins it).
UPLOAD_LIMIT_BYTES = 25 * 1024 * 1024
MAX_SHARDS = 64  # spec.shards' bound in the CRD
MAX_FRONTENDS = 100  # datacenters[].frontendReplicas' bound in the CRD
# How a frontend spends its memory limit (imageserver.cli and imageserver.admission; a test
# pins them): 15 % for the allocator, the variant cache at its budget, then uploads and
# renders, of which one client may hold half, so one largest upload (held twice: the chunks,
# then the body) must fit in half of what is left.
FRONTEND_CACHE_BYTES = 256 * 1024 * 1024
MEMORY_MARGIN = 0.85
CLIENT_SHARE = 0.5
OVER = 1.5  # a spec above this multiple of the plan is called over-provisioned

Verdict = Literal["under", "ok", "over"]


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    shown: str
    arithmetic: str


@dataclass(frozen=True)
class DatacenterPlan:
    name: str
    share: float  # of the peak it carries with the failure budget spent
    figures: tuple[Figure, ...]

    def figure(self, name: str) -> Figure:
        return next(f for f in self.figures if f.name == name)

    def value(self, name: str) -> float:
        return self.figure(name).value


@dataclass(frozen=True)
class Comparison:
    resource: str  # the spec field, as a person finds it
    planned: str
    spec: str
    verdict: Verdict
    by: str  # how far off, in words

    def line(self) -> str:
        return f"{self.resource}: {self.by} (plan {self.planned}, spec {self.spec})"


@dataclass(frozen=True)
class Plan:
    service: tuple[Figure, ...]
    datacenters: tuple[DatacenterPlan, ...]
    comparisons: tuple[Comparison, ...]
    replica_capacity_rps: float
    utilization: float  # the planned ceiling on CPU utilization
    unit_costs: str
    spares: int = 0
    demand_cores: float = 0.0  # CPU seconds per second of the whole peak load
    cores_per_pod: float = 1.0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def short(self) -> tuple[Comparison, ...]:
        return tuple(c for c in self.comparisons if c.verdict == "under")

    def value(self, name: str) -> float:
        return next(f.value for f in self.service if f.name == name)


def _n(value: float) -> str:
    """A figure in the arithmetic: three significant figures, no exponent below a trillion."""
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _ceil(value: float) -> int:
    return max(0, math.ceil(value - 1e-9))  # 3.0000000001 pods is 3 pods


def _verdict(planned: float, spec: float, show: Callable[[float], str]) -> tuple[Verdict, str]:
    if spec < planned:
        return (
            "under",
            f"short by {show(planned - spec)} (the spec has {_n(spec / planned * 100)} % of the plan)",
        )
    if planned > 0 and spec > planned * OVER:
        return "over", f"over by {show(spec - planned)} ({_n(spec / planned)}x the plan)"
    return "ok", "enough"


@dataclass(frozen=True)
class _Classes:
    """Requests per second and CPU seconds per request, by class."""

    names: tuple[str, ...]
    rates: tuple[float, ...]
    seconds: tuple[float, ...]
    slowest: float  # the longest single request of any class (an upload, or a render)
    mix: tuple[tuple[float, float], ...]  # (requests/s, CPU seconds): an on-demand read hit or miss

    def latency_limit(self, threshold: float, allowed: float) -> tuple[float, float] | None:
        """The highest utilization at which every class with load (any class, when none has)
        answers within `threshold` but for `allowed` of its requests, with that class's CPU
        seconds; None when even idle cores cannot."""
        loaded = [s for rate, s in self.mix if rate > 0] or [s for _, s in self.mix]
        slowest = max(loaded)
        limit = 1 - slowest * math.log(1 / allowed) / threshold
        return (limit, slowest) if limit > 0 else None

    @property
    def total(self) -> float:
        return sum(self.rates)

    @property
    def demand(self) -> float:
        return sum(r * s for r, s in zip(self.rates, self.seconds, strict=True))


def _classes(spec: ImageServerSpec, cap: CapacitySpec, c: UnitCosts) -> _Classes:
    read = 1 / c.cached_reads_per_core_second
    original = 1 / c.original_reads_per_core_second
    render = c.render_seconds_per_megapixel * cap.original_size.megapixels
    upload = (
        read
        + c.ingest_seconds_per_megabyte * parse(cap.original_size.mean) / 1e6
        + len(spec.variants) * render
    )
    hit = cap.reads.on_demand_hit_percent / 100
    on_demand = read + (1 - hit) * render
    names = ("upload", "allowlisted read", "on-demand read", "original read")
    rates = (cap.uploads_per_second, cap.reads.variants, cap.reads.on_demand, cap.reads.originals)
    worst = (upload, read, read + render if hit < 1 else read, original)
    slowest = max(worst)
    mix = (
        (rates[0], upload),
        (rates[1], read),
        (rates[2] * hit, read),
        (rates[2] * (1 - hit), read + render),
        (rates[3], original),
    )
    return _Classes(names, rates, (upload, read, on_demand, original), slowest, mix)


def _shares(datacenters: Sequence[DatacenterSpec], lose: int) -> dict[str, tuple[float, str]]:
    """Each datacenter's share of the peak once the `lose` heaviest others are gone."""
    active = [dc for dc in datacenters if dc.weight > 0]
    total = sum(dc.weight for dc in active)
    shares = {}
    for dc in datacenters:
        if dc.weight == 0:
            shares[dc.name] = (0.0, "weight 0: it serves no traffic")
            continue
        others = sorted((o.weight for o in active if o.name != dc.name), reverse=True)
        lost = sum(others[:lose])
        left = total - lost
        if lose == 0:
            why = f"weight {dc.weight} of {total}"
        else:
            gone = min(lose, len(others))
            why = f"weight {dc.weight} of {total} - {lost} lost with the {gone} heaviest others"
        shares[dc.name] = (dc.weight / left, why)
    return shares


def _bytes_of(box: str, costs: UnitCosts, megapixels: float) -> float:
    width, height = (int(n) for n in box.split("x"))
    return costs.variant_bytes_per_megapixel * min(width * height / 1e6, megapixels)


class Unplannable(ValueError):
    """The spec's figures cannot be planned (a zero where a size goes): the message says which."""


def _checked(spec: ImageServerSpec, cap: CapacitySpec) -> None:
    sizes = {
        "capacity.originalSize.mean": cap.original_size.mean,
        "capacity.originalSize.p99": cap.original_size.p99,
        "capacity.maxVolumeSize": cap.max_volume_size,
    }
    for name, text in sizes.items():
        value = parse(text)
        if not 1 <= value < 1e18:
            raise Unplannable(f"{name} is {text}: a size from 1 byte to an exabyte is needed")
    if parse(cap.original_size.p99) < parse(cap.original_size.mean):
        raise Unplannable("capacity.originalSize.p99 is smaller than its mean")
    cpu = spec.resources.frontend.requests.cpu
    if cpu and not 0.001 <= parse(cpu) < 1e6:
        raise Unplannable(f"resources.frontend.requests.cpu is {cpu}: a frontend pod needs some CPU")
    if spec.storage.write_quorum > spec.storage.replicas:
        raise Unplannable("storage.writeQuorum is greater than storage.replicas")


def plan(spec: ImageServerSpec, measured: UnitCosts) -> Plan:
    """The bill of materials of `spec.capacity` (which must be set); Unplannable when a figure
    it needs is zero or out of range."""
    cap = spec.capacity
    if cap is None:
        raise Unplannable("spec.capacity is not set: nothing to plan")
    _checked(spec, cap)
    c = measured.with_overrides(cap.unit_costs)
    classes = _classes(spec, cap, c)
    threshold = spec.slo.latency.threshold_seconds
    target = cap.target_utilization_percent / 100
    allowed = 1 - spec.slo.latency.objective / 100
    limit = classes.latency_limit(threshold, allowed)
    feasible = limit is not None
    by_latency, bounding = limit if limit is not None else (0.0, classes.slowest)
    # When no utilization meets it, the pods are sized at the target and the plan says so.
    utilization = min(target, by_latency) if feasible else target
    cores_per_pod = (
        parse(spec.resources.frontend.requests.cpu) if spec.resources.frontend.requests.cpu else 1.0
    )
    spares = cap.failure_budget.frontend_spares
    mean_s = classes.demand / classes.total if classes.demand > 0 else classes.seconds[1]
    hit = cap.reads.on_demand_hit_percent / 100
    mean_bytes = parse(cap.original_size.mean)
    p99_bytes = parse(cap.original_size.p99)
    variant_bytes = [_bytes_of(v, c, cap.original_size.megapixels) for v in spec.variants]
    allowlisted_read_bytes = sum(variant_bytes) / len(variant_bytes) if variant_bytes else mean_bytes
    on_demand_bytes = _bytes_of(cap.reads.on_demand_size, c, cap.original_size.megapixels)
    objects = 1 + len(spec.variants)
    stored = mean_bytes + sum(variant_bytes)
    replicas = spec.storage.replicas

    service = [
        *(
            Figure(
                f"{name} CPU",
                seconds,
                f"{seconds * 1000:.3g} ms",
                _class_arithmetic(name, spec, cap, c),
            )
            for name, seconds in zip(classes.names, classes.seconds, strict=True)
        ),
        Figure(
            "peak CPU demand",
            classes.demand,
            f"{classes.demand:,.1f} cores",
            " + ".join(
                f"{_n(r)}/s x {s * 1000:.3g} ms"
                for r, s in zip(classes.rates, classes.seconds, strict=True)
                if r
            )
            or "no load",
        ),
        Figure(
            "CPU utilization ceiling",
            utilization,
            f"{utilization:.0%}",
            f"min(target {target:.0%}, 1 - {bounding * 1000:.3g} ms (the slowest request with load) x "
            f"ln(1 / {allowed:.3g}) / {threshold:g} s = {by_latency:.1%}: M/M/1, "
            f"{spec.slo.latency.objective:g} % within the threshold)",
        ),
        Figure(
            "stored per upload",
            stored,
            show_bytes(stored),
            f"original {show_bytes(mean_bytes)}"
            + "".join(f" + {v} {show_bytes(b)}" for v, b in zip(spec.variants, variant_bytes, strict=True)),
        ),
    ]
    avg_uploads = cap.uploads_per_second * cap.average_percent_of_peak / 100
    growth = cap.growth_percent_per_year / 100
    years = (
        ((1 + growth) ** cap.retention_years - 1) / math.log1p(growth) if growth > 0 else cap.retention_years
    )
    data = avg_uploads * YEAR_SECONDS * years * stored
    growth_text = (
        f"((1 + {growth:g})^{cap.retention_years:g} - 1) / ln(1 + {growth:g}) "
        f"= {years:.3g} years of today's rate"
        if growth > 0
        else f"{cap.retention_years:g} years"
    )
    service.append(
        Figure(
            "data per datacenter (one copy)",
            data,
            show_bytes(data),
            f"{_n(avg_uploads)} uploads/s on average ({cap.average_percent_of_peak:g} % of peak) x "
            f"{YEAR_SECONDS:,.0f} s/year x {growth_text} x {show_bytes(stored)}",
        )
    )
    headroom = cap.volume_headroom_percent / 100
    max_volume = parse(cap.max_volume_size)
    volume_seconds = objects / c.storage_writes_per_second + stored / c.storage_write_bytes_per_second
    for_writes = _ceil(cap.uploads_per_second * volume_seconds / target)
    for_data = _ceil(data / (max_volume * (1 - headroom)))
    shards = max(1, for_writes, for_data)
    service.append(
        Figure(
            "shards",
            shards,
            f"{shards:,}",
            f"max(writes: {_n(cap.uploads_per_second)} uploads/s x ({objects} objects / "
            f"{_n(c.storage_writes_per_second)} writes/s + {show_bytes(stored)} / "
            f"{show_bytes(c.storage_write_bytes_per_second)}/s) per volume / {target:.0%} = {for_writes}, "
            f"data: {show_bytes(data)} / ({cap.max_volume_size} x {1 - headroom:.0%}) = {for_data:,})",
        )
    )
    at = max(spec.shards, 1)
    volume = data / at / (1 - headroom)
    service.append(
        Figure(
            f"volume at {at} shards",
            volume,
            volume_size(volume),
            f"{show_bytes(data)} / {at} shards / (1 - {headroom:.0%} headroom)",
        )
    )
    service.append(
        Figure(
            "storage pods per datacenter",
            shards * replicas,
            f"{shards * replicas:,}",
            f"{shards:,} shards x {replicas} replicas",
        )
    )
    replica_capacity = cores_per_pod * max(0.0, by_latency) / mean_s
    service.append(
        Figure(
            "requests/s per frontend pod",
            replica_capacity,
            f"{replica_capacity:,.0f}",
            f"{cores_per_pod:g} cores x {max(0.0, by_latency):.0%} (the latency SLO's limit) / "
            f"{mean_s * 1000:.3g} ms per request on average",
        )
    )

    shares = _shares(spec.datacenters, cap.failure_budget.datacenters)
    active = [dc for dc in spec.datacenters if dc.weight > 0]
    total_weight = sum(dc.weight for dc in active)
    plans = []
    comparisons: list[Comparison] = []
    notes: list[str] = []
    memory_field, memory_limit = (
        ("resources.frontend.limits.memory", spec.resources.frontend.limits.memory)
        if spec.resources.frontend.limits.memory
        else ("resources.frontend.requests.memory", spec.resources.frontend.requests.memory)
    )
    for dc in spec.datacenters:
        share, why = shares[dc.name]
        cores = share * classes.demand / utilization
        serving = _ceil(cores / cores_per_pod)
        pods = serving + spares if share > 0 else 0  # a weightless one serves nobody, ever
        busy = max(serving, 1)
        uploads_here = share * cap.uploads_per_second / busy
        in_flight = uploads_here * classes.seconds[0] / (1 - utilization) if utilization < 1 else 0.0
        cache = (1 - hit) * share * cap.reads.on_demand / busy * on_demand_bytes * cap.cache_seconds
        work = max(in_flight * 2 * p99_bytes, (2 * UPLOAD_LIMIT_BYTES + 1) / CLIENT_SHARE)
        memory = (c.frontend_base_memory_bytes + FRONTEND_CACHE_BYTES + work) / MEMORY_MARGIN
        if cache > FRONTEND_CACHE_BYTES:
            notes.append(
                f"{dc.name}: the renders of the last {cap.cache_seconds:g} s take {show_bytes(cache)} per "
                f"frontend pod, more than its {show_bytes(FRONTEND_CACHE_BYTES)} variant cache: fewer "
                f"on-demand reads than {cap.reads.on_demand_hit_percent:g} % will be cache hits"
            )
        if pods > MAX_FRONTENDS:
            notes.append(
                f"{dc.name}: {pods:,} frontend pods is more than a datacenter of one ImageServer holds "
                f"({MAX_FRONTENDS}): larger pods (resources.frontend.requests.cpu), or split the load"
            )
        egress = share * (
            cap.reads.variants * allowlisted_read_bytes
            + cap.reads.on_demand * on_demand_bytes
            + cap.reads.originals * mean_bytes
        )
        normal = dc.weight / total_weight if total_weight else 0.0
        others = len(spec.datacenters) - 1
        replication = normal * cap.uploads_per_second * stored * others
        figures = (
            Figure("share of peak", share, f"{share:.0%}", why),
            Figure(
                "frontend cores",
                cores,
                f"{cores:,.1f}",
                f"{share:.0%} x {classes.demand:,.1f} cores / {utilization:.0%} utilization",
            ),
            Figure(
                "frontend pods",
                pods,
                f"{pods:,}",
                f"ceil({cores:,.1f} cores / {cores_per_pod:g} cores per pod) + {spares} spares"
                if share > 0
                else "none: it serves no traffic",
            ),
            Figure(
                "memory per frontend pod",
                memory,
                show_bytes(memory),
                f"({show_bytes(c.frontend_base_memory_bytes)} process + {show_bytes(FRONTEND_CACHE_BYTES)} "
                f"variant cache + max({in_flight:.3g} uploads in flight x 2 x {show_bytes(p99_bytes)} (p99), "
                f"one largest upload twice / {CLIENT_SHARE:.0%} for one client)) / {MEMORY_MARGIN:.0%} "
                "(the allocator's margin)",
            ),
            Figure(
                "on-demand cache per frontend pod",
                cache,
                show_bytes(cache),
                f"{_n((1 - hit) * share * cap.reads.on_demand / busy)} renders/s x "
                f"{show_bytes(on_demand_bytes)} x {cap.cache_seconds:g} s",
            ),
            Figure(
                "egress to users",
                egress * 8,
                show_rate(egress * 8),
                f"{share:.0%} x ({_n(cap.reads.variants)} x {show_bytes(allowlisted_read_bytes)} + "
                f"{_n(cap.reads.on_demand)} x {show_bytes(on_demand_bytes)} + "
                f"{_n(cap.reads.originals)} x {show_bytes(mean_bytes)}) per second",
            ),
            Figure(
                "ingress from users",
                share * cap.uploads_per_second * mean_bytes * 8,
                show_rate(share * cap.uploads_per_second * mean_bytes * 8),
                f"{share:.0%} x {_n(cap.uploads_per_second)} uploads/s x {show_bytes(mean_bytes)}",
            ),
            Figure(
                "replication to other datacenters",
                replication * 8,
                show_rate(replication * 8),
                f"{normal:.0%} of {_n(cap.uploads_per_second)} uploads/s x {show_bytes(stored)} "
                f"x {others} others",
            ),
            Figure(
                "storage volumes",
                shards * replicas,
                f"{shards * replicas:,} x {volume_size(data / shards / (1 - headroom))}",
                f"{shards:,} shards x {replicas} replicas, each {show_bytes(data)} / {shards:,} / "
                f"(1 - {headroom:.0%})",
            ),
        )
        plans.append(DatacenterPlan(dc.name, share, figures))
        comparisons.append(
            _compare(
                f"datacenters[{dc.name}].frontendReplicas",
                pods,
                dc.frontend_replicas,
                f"{pods:,}",
                _count("pods"),
            )
        )
        if memory_limit:  # a limit only fails when it is too low: a high one reserves nothing
            comparisons.append(
                _compare(
                    f"{memory_field} ({dc.name})",
                    memory,
                    parse(memory_limit),
                    show_bytes(memory),
                    show_bytes,
                    spec_text=memory_limit,
                    over=False,
                )
            )

    comparisons.append(_compare("shards", shards, spec.shards, f"{shards:,}", _count("shards")))
    if shards > MAX_SHARDS:
        notes.append(f"{shards:,} shards is more than one ImageServer holds ({MAX_SHARDS}): split the load")
    comparisons.append(
        _compare(
            "storage.volumeSize",
            volume,
            parse(spec.storage.volume_size),
            volume_size(volume),
            show_bytes,
            spec_text=spec.storage.volume_size,
        )
    )
    if volume > max_volume:
        notes.append(
            f"a volume of {volume_size(volume)} at {at} shards is more than the largest one "
            f"({cap.max_volume_size}): "
            + ("add shards" if at < MAX_SHARDS else "split the data over several ImageServers")
        )
    losses = cap.failure_budget.storage_replica_losses
    spare_replicas = spec.storage.replicas - spec.storage.write_quorum
    if spare_replicas < losses:
        comparisons.append(
            Comparison(
                "storage.replicas - storage.writeQuorum",
                str(losses),
                str(spare_replicas),
                "under",
                f"uploads stop when {spare_replicas + 1} replicas of a shard are down; the failure budget "
                f"says {losses}",
            )
        )
    if len(active) <= cap.failure_budget.datacenters:
        comparisons.append(
            Comparison(
                "datacenters",
                str(cap.failure_budget.datacenters + 1),
                str(len(active)),
                "under",
                f"losing {cap.failure_budget.datacenters} of {len(active)} serving datacenters leaves none",
            )
        )
    if not feasible:
        needed = bounding * math.log(1 / allowed)
        comparisons.append(
            Comparison(
                "slo.latency.thresholdSeconds",
                f"> {needed:.3g}",
                f"{threshold:g}",
                "under",
                f"a request of {bounding * 1000:.3g} ms of CPU by the measured costs takes over "
                f"{threshold:g} s more than {allowed:.2%} of the time even on idle cores (M/M/1): no number "
                "of pods meets the latency objective (sized at the target)",
            )
        )
    if p99_bytes > UPLOAD_LIMIT_BYTES:
        comparisons.append(
            Comparison(
                "capacity.originalSize.p99",
                f"<= {show_bytes(UPLOAD_LIMIT_BYTES)}",
                cap.original_size.p99,
                "under",
                f"more than 1 % of uploads exceed the frontends' limit of {show_bytes(UPLOAD_LIMIT_BYTES)} "
                "and are refused (413)",
            )
        )
    return Plan(
        service=tuple(service),
        datacenters=tuple(plans),
        comparisons=tuple(comparisons),
        replica_capacity_rps=replica_capacity,
        utilization=utilization,
        unit_costs=c.provenance(),
        spares=spares,
        demand_cores=classes.demand,
        cores_per_pod=cores_per_pod,
        notes=tuple(notes),
    )


def _compare(
    resource: str,
    planned: float,
    spec: float,
    planned_text: str,
    show: Callable[[float], str],
    *,
    spec_text: str = "",
    over: bool = True,
) -> Comparison:
    verdict, by = _verdict(planned, spec, show)
    if verdict == "over" and not over:
        verdict, by = "ok", "enough"
    return Comparison(resource, planned_text, spec_text or _n(spec), verdict, by)


def _count(unit: str) -> Callable[[float], str]:
    return lambda n: f"{_n(n)} {unit}"


def _class_arithmetic(name: str, spec: ImageServerSpec, cap: CapacitySpec, c: UnitCosts) -> str:
    read = f"{1000 / c.cached_reads_per_core_second:.3g} ms a request"
    render = f"{c.render_seconds_per_megapixel * 1000:.3g} ms/MP x {cap.original_size.megapixels:g} MP"
    if name == "upload":
        return (
            f"{read} + {c.ingest_seconds_per_megabyte * 1000:.3g} ms/MB x "
            f"{parse(cap.original_size.mean) / 1e6:.3g} MB + {len(spec.variants)} variants x {render}"
        )
    if name == "on-demand read":
        return f"{read} + {100 - cap.reads.on_demand_hit_percent:g} % misses x {render}"
    if name == "original read":
        return f"1 / {_n(c.original_reads_per_core_second)} reads per core second"
    return f"1 / {_n(c.cached_reads_per_core_second)} cached reads per core second"
