"""The ImageServer and Postmortem APIs as pydantic models: the one source of truth.

The CRD schema (`crds.py`) is generated from these classes, descriptions become
`kubectl explain` text, and the rules the schema cannot say by type alone are CEL rules
(`x-kubernetes-validations`) attached here, next to the fields they guard, with messages a
person understands.
"""

from __future__ import annotations

import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from imageserver_operator.api import durations

GROUP = "imageserver.dev"
# Child names add up to "-storage-<datacenter>-s<shard>" and a StatefulSet's revision hash to
# the ImageServer's name; a label value holds 63 characters.
MAX_NAME = 24
VERSION = "v1alpha1"
DNS_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
DURATION = r"^[0-9]+(s|m|h|d)$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"
# Latency thresholds must be a bucket boundary of imageserver_http_request_duration_seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


# A release during a budget freeze: its reason (a P0 or security fix), recorded by the operator.
RELEASE_EXCEPTION_ANNOTATION = f"{GROUP}/release-exception"
RELEASES_FROZEN = "ReleasesFrozen"  # the SLO loop's condition the admission policy reads
# The reconcile loop's condition from the capacity plan; the SLO loop tells Slack of it.
CAPACITY_INSUFFICIENT = "CapacityInsufficient"


def cel(rule: str, message: str, **extra: str) -> JsonDict:
    """An x-kubernetes-validations rule; `message` is what the person who applied it reads."""
    return {"rule": rule, "message": message, **extra}


def bounded_duration(
    name: str,
    maximum: datetime.timedelta,
    *,
    minimum: datetime.timedelta = durations.ZERO,
    units: str = durations.ALL_UNITS,
) -> JsonDict:
    """Schema of a duration field beyond its pattern: the range, told by the API server, and a
    short string (so the rule's estimated cost stays small). The models do not check it: the
    operator still reads objects stored before the rule, and `durations.parse` clamps those."""
    rule = durations.cel_rule(name, maximum, minimum=minimum, units=units)
    return {"maxLength": durations.MAX_LENGTH, "x-kubernetes-validations": [cel(**rule)]}


class Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class DatacenterSpec(Model):
    name: str = Field(
        description="Datacenter name, used in object names and metric labels (a DNS label).",
        pattern=DNS_LABEL,
        max_length=12,
    )
    region: str = Field(
        "",
        description="Value of the nodes' topology.kubernetes.io/region label that pins this datacenter's "
        "pods. Empty: the datacenter name.",
        max_length=63,
    )
    frontend_replicas: int = Field(2, ge=1, le=100, description="Frontend pods in this datacenter.")
    weight: int = Field(
        100, ge=0, le=1000, description="Share of traffic routed here, relative to the other datacenters."
    )


class StorageSpec(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.writeQuorum <= self.replicas",
                    "writeQuorum (W) must not be greater than replicas (R): "
                    "a write could never be acknowledged",
                    fieldPath=".writeQuorum",
                ),
            ]
        }
    )
    replicas: int = Field(3, ge=1, le=7, description="Replicas of every shard in every datacenter (R).")
    write_quorum: int = Field(
        2, ge=1, le=7, description="Replicas that must hold an upload before it is acknowledged (W ≤ R)."
    )
    volume_size: str = Field("10Gi", pattern=QUANTITY, description="Size of each storage replica's volume.")
    storage_class_name: str = Field(
        "", max_length=253, description="StorageClass of the volumes. Empty: the cluster's default."
    )
    cross_datacenter: Literal["async", "sync"] = Field(
        "async",
        description="How uploads reach the other datacenters: async (after the acknowledgement, from "
        "hints the storage replicas keep on disk until delivered) or sync (before it).",
    )
    accept_unauthenticated_writes: bool = Field(
        False,
        description="Storage nodes also take writes that carry no token (a wrong token is still "
        "refused). Only for the upgrade from a release without storage tokens, whose frontends send "
        "none: set it for that rollout, then back to false.",
    )


class ResourceList(Model):
    cpu: str = Field("", pattern=r"^$|" + QUANTITY[1:], description="CPU, e.g. 250m.")
    memory: str = Field("", pattern=r"^$|" + QUANTITY[1:], description="Memory, e.g. 256Mi.")


class Resources(Model):
    requests: ResourceList = Field(default_factory=ResourceList, description="Guaranteed resources.")
    limits: ResourceList = Field(default_factory=ResourceList, description="Resource ceilings.")


class ResourcesSpec(Model):
    frontend: Resources = Field(
        default_factory=lambda: Resources(
            requests=ResourceList(cpu="250m", memory="256Mi"), limits=ResourceList(memory="1Gi")
        ),
        description="Resources of each frontend pod.",
    )
    storage: Resources = Field(
        default_factory=lambda: Resources(
            requests=ResourceList(cpu="100m", memory="128Mi"), limits=ResourceList(memory="512Mi")
        ),
        description="Resources of each storage pod.",
    )


class AvailabilitySLO(Model):
    objective: float = Field(
        99.9, gt=0, lt=100, description="Percent of requests that must not fail with a 5xx, e.g. 99.9."
    )


class LatencySLO(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"self.thresholdSeconds in {list(LATENCY_BUCKETS)}",
                    "thresholdSeconds must be a latency bucket boundary: "
                    + ", ".join(f"{b:g}" for b in LATENCY_BUCKETS),
                    fieldPath=".thresholdSeconds",
                ),
            ]
        }
    )
    objective: float = Field(99.0, gt=0, lt=100, description="Percent of requests faster than the threshold.")
    threshold_seconds: float = Field(0.5, gt=0, description="The latency threshold in seconds.")


class SLOSpec(Model):
    availability: AvailabilitySLO = Field(default_factory=AvailabilitySLO, description="Availability SLO.")
    latency: LatencySLO = Field(default_factory=LatencySLO, description="Latency SLO.")
    window: str = Field(
        "30d",
        pattern=r"^[0-9]+d$",
        description="SLO window (error budget period), e.g. 30d; from 1d to 90d.",
        json_schema_extra=bounded_duration(
            "window", durations.SLO_WINDOW_MAX, minimum=durations.SLO_WINDOW_MIN, units="d"
        ),
    )


class RollbackPolicy(Model):
    enabled: bool = Field(True, description="Roll back a revision that burns the budget at page level.")
    window: str = Field(
        "1h",
        pattern=DURATION,
        description="How long after a rollout a revision is a rollback candidate; at most 7d.",
        json_schema_extra=bounded_duration("window", durations.ROLLBACK_WINDOW_MAX),
    )


class DrainPolicy(Model):
    enabled: bool = Field(True, description="Drain a datacenter whose burn is concentrated there.")
    max_drained: int = Field(1, ge=0, le=7, description="Datacenters drained at once, at most.")
    headroom_percent: int = Field(
        20,
        ge=0,
        le=100,
        description="Spare capacity the remaining datacenters must keep after absorbing a drained "
        "one's weight.",
    )
    healthy_period: str = Field(
        "10m",
        pattern=DURATION,
        description="How long a drained datacenter must be healthy before undrain; at most 1d.",
        json_schema_extra=bounded_duration("healthyPeriod", durations.HEALTHY_PERIOD_MAX),
    )
    replica_capacity_rps: int = Field(
        100,
        ge=1,
        le=100000,
        description="Requests per second one frontend pod can serve; with headroomPercent it decides whether "
        "the other datacenters can absorb a drained one's traffic.",
    )


class RemediationSpec(Model):
    mode: Literal["auto", "dryRun", "off"] = Field(
        "auto", description="auto: act; dryRun: decide and report, never act; off: watch only."
    )
    rollback: RollbackPolicy = Field(default_factory=RollbackPolicy, description="Automatic rollback.")
    drain: DrainPolicy = Field(default_factory=DrainPolicy, description="Automatic datacenter drain.")
    cooldown: str = Field(
        "10m",
        pattern=DURATION,
        description="Minimum time between two automated actions; at most 1d.",
        json_schema_extra=bounded_duration("cooldown", durations.COOLDOWN_MAX),
    )


class RolloutSpec(Model):
    waves: list[list[str]] = Field(
        default_factory=list,
        max_length=8,
        description="Datacenters that take a new version together, wave after wave; each wave is judged "
        "against the stable version still running in the datacenters after it. Every datacenter in "
        "exactly one wave. Empty: the first datacenter alone, then the rest. The last wave ends the "
        "rollout (nothing is left to compare it with: the budget-burn rollback guards it from there).",
        json_schema_extra={
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": 8,
                "items": {"type": "string", "maxLength": 12, "pattern": DNS_LABEL},
            }
        },
    )
    bake: str = Field(
        "5m",
        pattern=DURATION,
        description="How long a wave runs the new version, with a passing verdict, before the next "
        "wave takes it; at most 1d.",
        json_schema_extra=bounded_duration("bake", durations.BAKE_MAX),
    )
    max_bake: str = Field(
        "30m",
        pattern=DURATION,
        description="How long a wave may stay inconclusive (too few requests, or not yet clear) before "
        "the rollout pauses and pages: it is never promoted without evidence; at most 1d.",
        json_schema_extra=bounded_duration("maxBake", durations.BAKE_MAX),
    )
    min_requests: int = Field(
        200,
        ge=10,
        le=10_000_000,
        description="Requests the wave and the control must each have served before any verdict "
        "(a page-level error ratio that is already certain fails sooner).",
    )
    error_margin_percent: float = Field(
        1.0,
        ge=0,
        le=100,
        description="How many percentage points the wave's error ratio (5xx) may exceed the control's "
        "and still pass.",
    )
    slow_margin_percent: float = Field(
        2.0,
        ge=0,
        le=100,
        description="How many percentage points the wave's share of requests slower than the latency "
        "SLO's threshold may exceed the control's and still pass.",
    )


class BudgetPolicy(Model):
    freeze: bool = Field(
        False,
        description="Refuse new versions while the error budget is spent (the SRE Workbook's error budget "
        "policy): the API server refuses a changed spec.version with the budget left and how to make an "
        "exception (annotation imageserver.dev/release-exception with the reason, for a P0 or security "
        "fix), and the operator starts no rollout. Lifted when the budget recovers.",
    )
    freeze_below_percent: float = Field(
        0,
        ge=-1000,
        le=100,
        description="Freeze while less than this share of the SLO window's error budget remains: 0 freezes "
        "once it is all spent, 10 keeps a tenth in reserve.",
    )
    postmortem_p0_above_percent: float = Field(
        20,
        ge=0,
        le=100,
        description="An incident that spent more than this share of the budget gets a P0 action item in its "
        "Postmortem, for people to name and own.",
    )


class SecretKeyRef(Model):
    name: str = Field(
        description="Secret name, in the ImageServer's namespace.", pattern=DNS_SUBDOMAIN, max_length=253
    )
    key: str = Field("token", max_length=253, description="Key in the Secret.")


class SlackSpec(Model):
    channel: str = Field(description="Channel to post incidents to, e.g. #imageserver-oncall.", max_length=80)
    token_secret_ref: SecretKeyRef = Field(description="Secret holding the Slack bot token.")


class NotificationsSpec(Model):
    slack: SlackSpec | None = Field(None, description="Slack notifications. Absent: none.")


class Toleration(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.operator != 'Exists' || self.value == ''",
                    "a toleration with operator Exists matches any value: leave value empty",
                    fieldPath=".value",
                ),
                cel(
                    "self.key != '' || self.operator == 'Exists'",
                    "a toleration without a key must use operator Exists (it then tolerates every taint)",
                    fieldPath=".operator",
                ),
            ]
        }
    )
    key: str = Field(
        "", max_length=316, description="Taint key it tolerates. Empty: every key (with Exists)."
    )
    operator: Literal["Equal", "Exists"] = Field(
        "Equal", description="Equal: key and value match. Exists: the key."
    )
    value: str = Field("", max_length=63, description="Taint value, with operator Equal.")
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = Field(
        "", description="Taint effect it tolerates. Empty: every effect."
    )


class Placement(Model):
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels every pod (frontends and storage) requires, beside its datacenter's "
        "region; for example a node pool.",
        json_schema_extra={"maxProperties": 16},
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=16, description="Taints every pod tolerates (dedicated nodes)."
    )

    def pod_fields(self) -> dict[str, Any]:
        """The pod spec's nodeSelector and tolerations (absent when not set)."""
        fields: dict[str, Any] = {}
        if self.node_selector:
            fields["nodeSelector"] = dict(self.node_selector)
        if self.tolerations:
            fields["tolerations"] = [
                t.model_dump(by_alias=True, exclude_defaults=True) for t in self.tolerations
            ]
        return fields


class GatewayRef(Model):
    name: str = Field("imageserver", pattern=DNS_SUBDOMAIN, max_length=253, description="Gateway name.")
    namespace: str = Field("", max_length=63, description="Gateway namespace. Empty: the ImageServer's.")


class MonitoringSpec(Model):
    prometheus_namespace: str = Field(
        "monitoring",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length=63,
        description="Namespace of the Prometheus that scrapes the pods (pods labelled "
        "app.kubernetes.io/name=prometheus): the storage NetworkPolicy admits it from there only.",
    )


SIZE = r"^[0-9]{1,4}x[0-9]{1,4}$"


class ReadLoad(Model):
    variants: float = Field(
        0, ge=0, le=1e9, description="Peak reads per second of allowlisted variants (rendered at upload)."
    )
    on_demand: float = Field(
        0, ge=0, le=1e9, description="Peak reads per second of signed on-demand variants."
    )
    originals: float = Field(0, ge=0, le=1e9, description="Peak reads per second of originals.")
    on_demand_hit_percent: float = Field(
        80,
        ge=0,
        le=100,
        description="Share of on-demand reads a frontend answers from its variant cache; the rest render.",
    )
    on_demand_size: str = Field(
        "600x400",
        pattern=SIZE,
        max_length=9,
        description="The typical on-demand variant's box, e.g. 600x400.",
    )


class OriginalSize(Model):
    mean: str = Field("2M", pattern=QUANTITY, description="Mean size of an uploaded original, e.g. 2M.")
    p99: str = Field(
        "8M",
        pattern=QUANTITY,
        description="99th percentile of the originals' sizes (the upload limit's test).",
    )
    megapixels: float = Field(
        12, gt=0, le=50, description="Mean pixels of an original in megapixels (a phone: 12)."
    )


class FailureBudget(Model):
    datacenters: int = Field(
        1, ge=0, le=7, description="Datacenters that may be lost at peak while the others carry all traffic."
    )
    frontend_spares: int = Field(
        2, ge=0, le=100, description="Frontend pods per datacenter beyond what its peak needs (N+2)."
    )
    storage_replica_losses: int = Field(
        1,
        ge=0,
        le=6,
        description="Replicas of a shard that may be down while uploads are still acknowledged "
        "(storage.replicas - storage.writeQuorum must be at least this).",
    )


class UnitCostOverrides(Model):
    """Per-unit costs measured on your own machines; each one absent is `make bench-capacity`'s."""

    render_seconds_per_megapixel: float | None = Field(
        None, gt=0, description="CPU seconds to render one variant, per megapixel of the original."
    )
    variant_bytes_per_megapixel: float | None = Field(
        None, gt=0, description="Bytes of an encoded variant per megapixel of its own."
    )
    ingest_seconds_per_megabyte: float | None = Field(
        None, gt=0, description="Frontend CPU seconds per megabyte uploaded (hashing, copying)."
    )
    cached_reads_per_core_second: float | None = Field(
        None, gt=0, description="Variant reads answered from the cache per CPU second of a frontend."
    )
    original_reads_per_core_second: float | None = Field(
        None, gt=0, description="Original reads per CPU second of a frontend."
    )
    storage_writes_per_second: float | None = Field(
        None, gt=0, description="Small fsync'd writes per second one storage volume takes."
    )
    storage_write_bytes_per_second: float | None = Field(
        None, gt=0, description="Bytes per second one storage volume takes in large fsync'd writes."
    )
    frontend_base_memory_bytes: float | None = Field(
        None, gt=0, description="Memory of an idle frontend process."
    )


class CapacitySpec(Model):
    """The load to plan for (NALSD): `imageserver-operator plan -f` prints the bill of materials,
    and the operator says in status (CapacityInsufficient) when the spec cannot carry it."""

    uploads_per_second: float = Field(ge=0, le=1e9, description="Peak uploads per second, all datacenters.")
    reads: ReadLoad = Field(default_factory=ReadLoad, description="Peak reads per second, all datacenters.")
    original_size: OriginalSize = Field(default_factory=OriginalSize, description="What an original weighs.")
    average_percent_of_peak: float = Field(
        50, gt=0, le=100, description="The day's average load as a share of its peak (for the disks)."
    )
    retention_years: float = Field(5, gt=0, le=100, description="How long images are kept.")
    growth_percent_per_year: float = Field(0, ge=0, le=1000, description="Upload growth per year.")
    failure_budget: FailureBudget = Field(
        default_factory=FailureBudget, description="The failures to survive at peak."
    )
    target_utilization_percent: float = Field(
        70,
        gt=0,
        le=100,
        description="Highest CPU and disk utilization planned for (lower still when the "
        "latency SLO needs it).",
    )
    volume_headroom_percent: float = Field(
        20, ge=0, le=90, description="Share of every volume kept free at the end of the retention."
    )
    max_volume_size: str = Field(
        "16Ti", pattern=QUANTITY, description="The largest volume your storage class provides."
    )
    cache_seconds: float = Field(
        300, ge=0, le=86400, description="How long a frontend keeps an on-demand render in its cache."
    )
    unit_costs: UnitCostOverrides = Field(
        default_factory=UnitCostOverrides,
        description="Per-unit costs; absent ones are the measured defaults.",
    )


class ImageServerSpec(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.datacenters.all(d, self.datacenters.filter(e, e.name == d.name).size() == 1)",
                    "datacenter names must be unique",
                    fieldPath=".datacenters",
                ),
                cel(
                    "self.trustedProxies.all(p, isIP(p) || isCIDR(p))",
                    "trustedProxies must be IP addresses or CIDRs, such as 10.0.0.0/8 or fd00::/8",
                    fieldPath=".trustedProxies",
                ),
                cel(
                    "self.rollout.waves.all(w, w.all(n, self.datacenters.exists(d, d.name == n)))",
                    "every datacenter a rollout wave names must be one of spec.datacenters",
                    fieldPath=".rollout.waves",
                ),
                cel(
                    "self.rollout.waves.size() == 0 || self.datacenters.all(d, "
                    "self.rollout.waves.map(w, w.filter(n, n == d.name).size()).sum() == 1)",
                    "each datacenter must be in exactly one rollout wave",
                    fieldPath=".rollout.waves",
                ),
                cel(
                    "self.shards >= oldSelf.shards",
                    "shards cannot be decreased: the images on the removed shards would be stranded",
                    fieldPath=".shards",
                ),
            ]
        }
    )
    image: str = Field(
        "ghcr.io/imageserver-sre/imageserver", max_length=253, description="Container image, without the tag."
    )
    version: str = Field(
        description="Image tag to run; also the revision label on pods and metrics "
        "(a label value: at most 63 characters, starting and ending with a letter or digit).",
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$",
    )
    datacenters: list[DatacenterSpec] = Field(
        min_length=1,
        max_length=8,
        description="Datacenters to run in; each gets its own frontends and shards.",
    )
    shards: int = Field(1, ge=1, le=64, description="Shards per datacenter. Can grow, never shrink.")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Storage replication and volumes.")
    variants: list[str] = Field(
        default_factory=lambda: ["300x300", "1200x1200"],
        max_length=16,
        description="Allowlisted fit-in sizes rendered at upload, e.g. 300x300.",
        json_schema_extra={
            "items": {"type": "string", "pattern": r"^[0-9]{1,4}x[0-9]{1,4}$", "maxLength": 9}
        },
    )
    variant_format: Literal["original", "auto"] = Field(
        "original",
        description="The format of a variant whose URL names none: original (the uploaded format), "
        "or auto: AVIF, else WebP, else the original's, whichever the browser's Accept names with "
        "the highest weight; answers say Vary: Accept, and the format chosen is in the ETag and "
        "every cache key. format=auto in a URL asks for the same whatever this says.",
    )
    engine: Literal["pillow", "vips"] = Field(
        "pillow",
        description="What renders variants: pillow, or vips (libvips' shrink-on-load, for stills from "
        "JPEG, PNG, WebP and AVIF; Pillow renders animations, GIF, HEIC and CMYK either way). Both "
        "make the same sizes and crops under the same limits and colour rule; `make bench` says "
        "which is faster on your machines. A change re-renders variants on first request.",
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Pod resources.")
    trusted_proxies: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Addresses or CIDRs of the proxies in front of the frontends (your Gateway's pods) "
        "whose X-Forwarded-For names the client; name only them: any peer trusted here may name "
        "itself anyone. Frontends limit each client's uploads and renders in flight and share of "
        "memory; while this is empty, the client is the peer, so all traffic through one gateway "
        "pod counts as one client.",
        json_schema_extra={
            "items": {
                "type": "string",
                "maxLength": 43,
                "pattern": r"^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$",
            }
        },
    )
    slo: SLOSpec = Field(default_factory=SLOSpec, description="Service level objectives.")
    rollout: RolloutSpec = Field(
        default_factory=RolloutSpec,
        description="How a new version reaches the datacenters: in waves, each judged against the stable "
        "version running elsewhere at the same time.",
    )
    budget_policy: BudgetPolicy = Field(
        default_factory=BudgetPolicy, description="What a spent error budget stops: new versions."
    )
    remediation: RemediationSpec = Field(
        default_factory=RemediationSpec, description="What the operator may do."
    )
    notifications: NotificationsSpec = Field(
        default_factory=NotificationsSpec, description="Who hears of it."
    )
    placement: Placement = Field(
        default_factory=Placement,
        description="Which nodes the pods may run on, beside their datacenter's region.",
    )
    gateway_ref: GatewayRef = Field(
        default_factory=GatewayRef,
        description="Gateway the HTTPRoute attaches to (when the Gateway API is installed).",
    )
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec, description="Who scrapes the pods.")
    capacity: CapacitySpec | None = Field(
        None,
        description="The expected load and the failures to survive: the operator plans the capacity and "
        "sets CapacityInsufficient when this spec cannot carry it. Absent: no plan.",
    )


class Condition(Model):
    type: str = Field(
        description="Ready, Progressing, Degraded and AutomationPaused (the reconcile loop); SLOHealthy, "
        "Rollout, ReleasesFrozen, Rebalancing and RemediationFailing (the SLO loop).",
        max_length=64,
    )
    status: Literal["True", "False", "Unknown"]
    reason: str = Field("", description="One CamelCase word.")
    message: str = Field("", description="What a person should know.")
    last_transition_time: str = Field("", description="When status last changed (RFC 3339).")
    observed_generation: int = Field(0, description="The spec generation this condition is about.")


class DatacenterStatus(Model):
    name: str
    weight: int = Field(0, description="Traffic weight in effect (0 while drained).")
    drained: bool = Field(False, description="Drained by the operator or by hand.")
    ready_frontends: int = Field(0, description="Frontend pods ready.")
    ready_storage: int = Field(0, description="Storage pods ready, over all shards.")


class Revisions(Model):
    current: str = Field("", description="The version running now.")
    previous: str = Field("", description="The version before it (the rollback target).")
    since: str = Field("", description="When the current version was first applied (RFC 3339).")


class BurnRate(Model):
    window: str = Field(description="Window, e.g. 1h.", pattern=DURATION)
    burn_rate: float = Field(description="Multiple of the error budget spent over the window.")


class Tally(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    """What the open incident has cost users so far, summed cycle by cycle."""

    seconds: float = Field(0, ge=0, description="Time counted.")
    requests: float = Field(0, ge=0, description="Requests served in that time, from 5m rates.")
    failed: float = Field(0, ge=0, description="Requests that failed in that time, from 5m rates.")
    peak_errors_per_second: float = Field(0, ge=0, description="The highest 5m error rate seen.")
    counted_at: str = Field("", description="When the last cycle was counted (RFC 3339).")


class Baseline(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    revision: str = Field(description="A revision.", max_length=63)
    page_level: bool = Field(description="It burned at page level while it was current.")
    burn: list[BurnRate] = Field(
        default_factory=list, max_length=8, description="Its burn when that was last judged."
    )

    def as_burn(self) -> dict[str, float]:
        return {b.window: b.burn_rate for b in self.burn}


class DatacenterClock(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    name: str = Field(description="A datacenter.", max_length=12)
    healthy_since: str = Field(description="Within budget continuously since (RFC 3339).")


class AutomationStatus(Model):
    """The SLO loop's memory. It lives here, not in a process, so a new leader (or a restarted
    operator) goes on from where the last one stopped. Fields it does not know (written by a
    newer operator) are ignored, not a reason to forget the rest."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    tally: Tally | None = Field(None, description="The open incident's cost so far.")
    baselines: list[Baseline] = Field(
        default_factory=list, max_length=2, description="How the current and previous revisions burned."
    )
    healthy: list[DatacenterClock] = Field(
        default_factory=list, max_length=16, description="Datacenters within budget, and since when."
    )
    fine_since: str = Field("", description="What serves users has been within budget since (RFC 3339).")
    unknown_since: str = Field("", description="The SLO could not be judged since (RFC 3339).")
    notified: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Notices already sent once (incident/kind/target), so none is sent twice.",
    )
    opening: str = Field(
        "",
        description="An incident being opened (its Postmortem name), until its annotation is written.",
        max_length=253,
    )
    exceptions: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="Versions released through a budget freeze (when, and the reason given), until the "
        "next incident's Postmortem records them.",
    )


class RequestCounts(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    requests: float = Field(0, ge=0, description="Requests served.")
    errors: float = Field(0, ge=0, description="Of which failed with a 5xx.")
    slow: float = Field(0, ge=0, description="Of which were slower than the latency SLO's threshold.")


class RolloutStatus(Model):
    """Where a new version has got to. Written by the SLO loop (and by people through
    `imageserver-operator promote|abort|rollback`, on the same path); the reconcile loop runs
    each datacenter at the revision this says. The spec is never rewritten: an aborted version
    stays named in spec.version, and runs nowhere, until a person changes the spec."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    target: str = Field(
        description="The version being rolled out (spec.version when it began).", max_length=63
    )
    stable: str = Field(
        description="The version the datacenters not yet promoted run, and an abort returns to.",
        max_length=63,
    )
    phase: Literal["Progressing", "Paused", "Complete", "Aborted"] = Field(
        description="Progressing: waves being judged; Paused: waiting for a person; Complete: every "
        "datacenter runs the target; Aborted: every datacenter runs the stable version again."
    )
    promoted: int = Field(0, ge=0, le=8, description="Waves running the target.")
    datacenters: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="Datacenters running the target, by name: a wave edited mid-rollout moves nothing.",
    )
    wave: list[str] = Field(
        default_factory=list, max_length=8, description="The datacenters of the wave being judged."
    )
    started_at: str = Field("", description="When the first wave took the target (RFC 3339).")
    wave_since: str = Field("", description="When the last wave took the target (RFC 3339).")
    canary: RequestCounts = Field(
        default_factory=RequestCounts, description="The target's requests since the wave began."
    )
    control: RequestCounts = Field(
        default_factory=RequestCounts, description="The stable version's requests over the same time."
    )
    counted_at: str = Field("", description="When the counts were last added to (RFC 3339).")
    verdict: str = Field("", description="The last verdict and the numbers behind it.", max_length=2000)
    rejected: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Versions aborted: one named in the spec again is not rolled out again until a person "
        "promotes it.",
    )


class CapacityStatus(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    summary: str = Field("", description="What one datacenter needs at peak with the failure budget spent.")
    short: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="What the spec lacks to carry the load, and by how much.",
    )
    replica_capacity_rps: float = Field(
        0, ge=0, description="Requests per second one frontend pod carries by the plan (the drain's check)."
    )
    unit_costs: str = Field("", description="Where the per-unit costs came from.")


class ImageServerStatus(Model):
    observed_generation: int = Field(0, description="The spec generation last reconciled.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Progressing, Degraded, ….",
        # Keyed by type: each loop applies its own conditions under its own field manager.
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    datacenters: list[DatacenterStatus] = Field(default_factory=list, description="Per-datacenter state.")
    revisions: Revisions = Field(default_factory=Revisions, description="Current and previous revision.")
    error_budget_remaining: str = Field("", description="Share of the window's error budget left, e.g. 87%.")
    rebalance_remaining: int | None = Field(
        None,
        description="Images still held by storage nodes whose shard no longer owns them, counted "
        "once per replica holding one, as of the last evaluation (Rebalancing condition). "
        "Absent: not reported.",
    )
    datacenter_summary: str = Field("", description="Datacenters for kubectl get, drained ones marked.")
    automation: AutomationStatus | None = Field(None, description="What the SLO loop remembers.")
    rollout: RolloutStatus | None = Field(None, description="Where the latest version has got to.")
    capacity: CapacityStatus | None = Field(
        None, description="The capacity plan of spec.capacity, in short (imageserver-operator plan: whole)."
    )


def spec_from(raw: Any) -> ImageServerSpec:
    """Validate a custom resource's spec (as the API server stored it)."""
    return ImageServerSpec.model_validate(raw)


# -- Postmortem: one per incident, written by the operator, finished by people ------------


class TimelineEntry(Model):
    time: str = Field(description="When (RFC 3339).", max_length=40)
    event: str = Field(description="What was seen or done.", max_length=2000)
    actor: Literal["operator", "alert", "human"] = Field("operator", description="Who saw or did it.")


class Impact(Model):
    duration_seconds: int = Field(0, ge=0, description="From the first burn to the resolution.")
    error_budget_consumed_percent: float = Field(0, ge=0, description="Share of the window's budget spent.")
    failed_requests_estimate: int = Field(0, ge=0, description="Requests that failed, estimated from rates.")


class Detection(Model):
    alert: str = Field("", description="The alert or the operator's own evaluation that saw it first.")
    detected_at: str = Field("", description="When (RFC 3339).")
    burn_rates: list[BurnRate] = Field(default_factory=list, max_length=8, description="Burn at detection.")


class LessonsLearned(Model):
    what_went_well: list[str] = Field(default_factory=list, max_length=50, description="For people to fill.")
    what_went_wrong: list[str] = Field(default_factory=list, max_length=50, description="For people to fill.")
    where_we_got_lucky: list[str] = Field(
        default_factory=list, max_length=50, description="For people to fill."
    )


class Links(Model):
    runbooks: list[str] = Field(default_factory=list, max_length=20, description="Runbook pages used.")
    slack_thread: str = Field("", description="Permalink of the incident's Slack thread.")


class ActionItem(Model):
    description: str = Field(description="What is to be done.", max_length=1000)
    owner: str = Field("", description="Who does it.", max_length=253)
    priority: Literal["P0", "P1", "P2", "P3"] = Field(
        "P2",
        description="P0: before the next release (the error budget policy's requirement when an "
        "incident spent more than spec.budgetPolicy.postmortemP0AbovePercent of the budget); P3: some day.",
    )
    ticket: str = Field("", description="Link to the ticket or bug.", max_length=2000)


class Review(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.status == oldSelf.status "
                    "|| (oldSelf.status == 'Draft' && self.status == 'InReview') "
                    "|| (oldSelf.status == 'InReview' && self.status in ['Draft', 'Published'])",
                    "review.status moves Draft → InReview → Published (or back from InReview to Draft)",
                    fieldPath=".status",
                ),
                cel(
                    "self.status != 'Published' || self.owner != ''",
                    "a Postmortem is published with an owner: set review.owner",
                    fieldPath=".owner",
                ),
            ]
        }
    )
    status: Literal["Draft", "InReview", "Published"] = Field(
        "Draft",
        description="Draft (the operator's, then people's), InReview, Published; people move it with "
        "kubectl patch or imageserver-operator postmortem review|publish NAME.",
    )
    owner: str = Field("", description="Who finishes it and leads the review.", max_length=253)
    due: str = Field("", description="When the review is due (RFC 3339): a week after the resolution.")


class Timing(Model):
    detect_seconds: int = Field(0, ge=0, description="Time to detect: from the first burn to detection.")
    mitigate_seconds: int = Field(
        0,
        ge=0,
        description="Time to mitigate: from the first burn to the first action that changed the world.",
    )
    resolve_seconds: int = Field(
        0, ge=0, description="Time to resolve: from the first burn to the resolution."
    )


class PostmortemSpec(Model):
    image_server: str = Field(description="The ImageServer this incident hit.", max_length=253)
    title: str = Field(description="One line.", max_length=200)
    state: Literal["Open", "Resolved"] = Field("Open", description="Open while the incident lasts.")
    started_at: str = Field("", description="First burn seen (RFC 3339).")
    resolved_at: str = Field("", description="Burn back under budget (RFC 3339).")
    summary: str = Field("", description="What happened, in two sentences.", max_length=4000)
    impact: Impact = Field(default_factory=Impact, description="How users were hurt.")
    trigger: str = Field("", description="What set it off, as far as the operator can tell.", max_length=4000)
    detection: Detection = Field(default_factory=Detection, description="How it was noticed.")
    resolution: str = Field("", description="What ended it.", max_length=4000)
    root_causes: str = Field(
        "TODO: for people. The operator knows symptoms, not causes.",
        max_length=8000,
        description="Why it happened.",
    )
    timeline: list[TimelineEntry] = Field(default_factory=list, max_length=500, description="Oldest first.")
    action_items: list[ActionItem] = Field(
        default_factory=lambda: [
            ActionItem(description="TODO: prevent recurrence"),
            ActionItem(description="TODO: improve detection or mitigation"),
        ],
        max_length=50,
        description="Follow-ups for people, each with its owner, priority and ticket.",
    )
    severity: Literal["", "SEV1", "SEV2", "SEV3"] = Field(
        "",
        description="From the error budget the incident spent, set at resolution: SEV1 from 20 %, SEV2 from "
        "5 %, SEV3 below.",
    )
    review: Review = Field(default_factory=Review, description="Where the write-up stands.")
    timing: Timing = Field(default_factory=Timing, description="Computed from the timeline at resolution.")
    revision: str = Field(
        "", description="The revision (or revisions) running when it started.", max_length=200
    )
    datacenter: str = Field("", description="The datacenter involved, when one was.", max_length=12)

    @field_validator("action_items", mode="before")
    @classmethod
    def _items_as_objects(cls, value: Any) -> Any:
        """Postmortems written before action items had owners hold plain strings."""
        if isinstance(value, list):
            return [{"description": item} if isinstance(item, str) else item for item in value]
        return value

    lessons_learned: LessonsLearned = Field(default_factory=LessonsLearned, description="For people to fill.")
    links: Links = Field(default_factory=Links, description="Runbooks and the Slack thread.")
