"""The capacity planner (NALSD): hand-computed examples, the README's worked example, and the
properties a plan must keep: more load never needs fewer resources, and the plan survives the
failure it declares within the latency SLO."""

from __future__ import annotations

import datetime
import io
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from imageserver import cli as imageserver_cli
from imageserver.admission import work_budget
from imageserver.frontend import CLIENT_SHARE
from imageserver.imaging import Limits
from imageserver_operator import cli
from imageserver_operator.api.models import LATENCY_BUCKETS, ImageServerSpec
from imageserver_operator.api.quantities import parse, volume_size
from imageserver_operator.api.unit_costs import UnitCosts, measured
from imageserver_operator.core import capacity, plan_view, status
from imageserver_operator.core.capacity import YEAR_SECONDS, plan

README = Path(__file__).resolve().parents[3] / "README.md"
# Round figures, so that every expectation below can be worked out by hand.
COSTS = UnitCosts(
    render_seconds_per_megapixel=0.01,
    variant_bytes_per_megapixel=100_000,
    ingest_seconds_per_megabyte=0.01,
    cached_reads_per_core_second=1000,
    original_reads_per_core_second=500,
    storage_writes_per_second=100,
    storage_write_bytes_per_second=100e6,
    frontend_base_memory_bytes=100e6,
    measured_by="the test's round figures",
    machine="none",
    measured_at="2026-12-07",
)


def spec(**capacity_fields: Any) -> ImageServerSpec:
    raw: dict[str, Any] = {
        "version": "1.0.0",
        "datacenters": [{"name": "a"}, {"name": "b"}],
        "variants": ["300x300"],
        "slo": {"latency": {"thresholdSeconds": 2.5}},
        "resources": {"frontend": {"requests": {"cpu": "1", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}},
        "capacity": {
            "uploadsPerSecond": 10,
            "reads": {
                "variants": 1000,
                "onDemand": 100,
                "originals": 100,
                "onDemandHitPercent": 50,
                "onDemandSize": "600x400",
            },
            "originalSize": {"mean": "1M", "p99": "4M", "megapixels": 10},
            "averagePercentOfPeak": 50,
            "retentionYears": 1,
            "growthPercentPerYear": 0,
            "targetUtilizationPercent": 50,
            "volumeHeadroomPercent": 20,
            "maxVolumeSize": "1Ti",
            "cacheSeconds": 100,
            **capacity_fields,
        },
    }
    return ImageServerSpec.model_validate(raw)


def test_a_small_service_by_hand() -> None:
    planned = plan(spec(), COSTS)
    # CPU per request: a cached read 1 ms, an original 2 ms, a render 0.01 s/MP x 10 MP = 100 ms;
    # an upload 1 ms + 10 ms/MB x 1 MB + 1 variant x 100 ms = 111 ms; an on-demand read
    # 1 ms + half of them render = 51 ms.
    assert planned.value("upload CPU") == pytest.approx(0.111)
    assert planned.value("on-demand read CPU") == pytest.approx(0.051)
    # 10 x 0.111 + 1000 x 0.001 + 100 x 0.051 + 100 x 0.002 = 7.41 cores at peak.
    assert planned.demand_cores == pytest.approx(7.41)
    # Latency: an upload (111 ms, the slowest) takes over 2.5 s at most 1 % of the time up to
    # 1 - 0.111 x ln(100) / 2.5 = 79.5 % busy (M/M/1), above the 50 % target: 50 %.
    assert planned.utilization == pytest.approx(0.5)
    a, b = planned.datacenters
    # Either one carries all of the peak when the other is lost: 7.41 / 0.5 = 14.82 cores,
    # 15 pods of one core, + 2 spares.
    assert a.share == b.share == 1.0
    assert a.value("frontend cores") == pytest.approx(14.82)
    assert a.value("frontend pods") == 17
    # Memory of a pod: the process, the 256 MiB variant cache, and room for uploads: 10/15
    # uploads/s x 111 ms / (1 - 0.5) = 0.148 in flight x 2 x 4 MB is less than one 25 MiB upload
    # twice for one client (half the room), all over the allocator's 85 %.
    room = (2 * 25 * 2**20 + 1) / 0.5
    assert a.value("memory per frontend pod") == pytest.approx((100e6 + 2**28 + room) / 0.85)
    # Renders to keep for the hit ratio: half of 100/15 renders/s x 24 kB x 100 s = 8 MB.
    assert a.value("on-demand cache per frontend pod") == pytest.approx(8e6)
    # Egress: 1000 x 9 kB (300x300 = 0.09 MP) + 100 x 24 kB + 100 x 1 MB per second, in bits.
    assert a.value("egress to users") == pytest.approx((9e6 + 2.4e6 + 100e6) * 8)
    # Half the uploads arrive here, each 1.009 MB stored, sent to the 1 other datacenter.
    assert a.value("replication to other datacenters") == pytest.approx(5 * 1_009_000 * 8)
    # Data: 5 uploads/s on average x a year x 1.009 MB; shards: writes need 1 (10 x (2 / 100
    # + 1.009 MB / 100 MB/s) / 0.5 = 0.6), data needs 1.59e14 / (1 TiB x 0.8) = 181.
    data = 5 * YEAR_SECONDS * 1_009_000
    assert planned.value("data per datacenter (one copy)") == pytest.approx(data)
    assert planned.value("shards") == math.ceil(data / (2**40 * 0.8)) == 181
    assert planned.value("storage pods per datacenter") == 181 * 3
    assert planned.value("volume at 1 shards") == pytest.approx(data / 0.8)
    # A pod carries 1 core x 79.5 % / (7.41 / 1210 requests) = 130 requests/s.
    limit = 1 - 0.111 * math.log(100) / 2.5
    assert planned.replica_capacity_rps == pytest.approx(limit / (7.41 / 1210))
    short = {c.resource: c for c in planned.short}
    assert set(short) == {
        "datacenters[a].frontendReplicas",
        "datacenters[b].frontendReplicas",
        "shards",
        "storage.volumeSize",
    }
    assert short["shards"].by == "short by 180 shards (the spec has 0.552 % of the plan)"
    assert short["datacenters[a].frontendReplicas"].planned == "17"


def test_a_spec_that_carries_its_load_is_not_short_and_says_what_is_over() -> None:
    planned = plan(spec(retentionYears=0.01, maxVolumeSize="16Ti"), COSTS)
    fitted = ImageServerSpec.model_validate(
        {
            **spec().model_dump(by_alias=True),
            "datacenters": [{"name": "a", "frontendReplicas": 17}, {"name": "b", "frontendReplicas": 40}],
            "storage": {"volumeSize": volume_size(planned.value("volume at 1 shards"))},
            "capacity": spec(retentionYears=0.01, maxVolumeSize="16Ti").capacity.model_dump(by_alias=True),  # type: ignore[union-attr]
        }
    )
    again = plan(fitted, COSTS)
    assert not again.short
    over = [c for c in again.comparisons if c.verdict == "over"]
    assert [c.resource for c in over] == ["datacenters[b].frontendReplicas"]
    assert over[0].by == "over by 23 pods (2.35x the plan)"


@pytest.mark.parametrize(
    ("change", "resource", "words"),
    [
        ({"failureBudget": {"datacenters": 2}}, "datacenters", "losing 2 of 2 serving datacenters"),
        ({"failureBudget": {"storageReplicaLosses": 2}}, "storage.replicas - storage.writeQuorum", "2"),
        (
            {"originalSize": {"mean": "1M", "p99": "30M", "megapixels": 10}},
            "capacity.originalSize.p99",
            "413",
        ),
        (
            {"unitCosts": {"renderSecondsPerMegapixel": 1}},
            "slo.latency.thresholdSeconds",
            "no number",
        ),
    ],
)
def test_what_no_number_of_pods_fixes_is_named(change: dict[str, Any], resource: str, words: str) -> None:
    short = {c.resource: c for c in plan(spec(**change), COSTS).short}
    assert resource in short
    assert words in short[resource].by


def test_weights_give_the_heavier_datacenter_more_and_a_weightless_one_nothing() -> None:
    raw = spec().model_dump(by_alias=True)
    raw["datacenters"] = [
        {"name": "a", "weight": 200},
        {"name": "b", "weight": 100},
        {"name": "c", "weight": 0},
    ]
    planned = plan(ImageServerSpec.model_validate(raw), COSTS)
    shares = {dc.name: dc.share for dc in planned.datacenters}
    # Losing b leaves a everything; losing a leaves b everything; c serves nobody.
    assert shares == {"a": 1.0, "b": 1.0, "c": 0.0}
    raw["capacity"]["failureBudget"] = {"datacenters": 0}
    planned = plan(ImageServerSpec.model_validate(raw), COSTS)
    assert {dc.name: round(dc.share, 3) for dc in planned.datacenters} == {"a": 0.667, "b": 0.333, "c": 0.0}


def test_unit_costs_given_in_the_spec_replace_the_measured_ones() -> None:
    planned = plan(spec(unitCosts={"renderSecondsPerMegapixel": 0.02}), COSTS)
    assert planned.value("upload CPU") == pytest.approx(0.001 + 0.01 + 0.2)
    assert "spec overrides render_seconds_per_megapixel" in planned.unit_costs


# -- properties ------------------------------------------------------------------------------

RESOURCES = ("frontend cores", "frontend pods", "egress to users", "ingress from users", "storage volumes")
SERVICE = ("shards", "storage pods per datacenter", "data per datacenter (one copy)", "peak CPU demand")


@st.composite
def loads(draw: st.DrawFn) -> dict[str, Any]:
    rate = st.floats(0, 1e6, allow_nan=False)
    return {
        "uploadsPerSecond": draw(rate),
        "reads": {
            "variants": draw(rate),
            "onDemand": draw(rate),
            "originals": draw(rate),
            "onDemandHitPercent": draw(st.floats(0, 100)),
        },
        "originalSize": {
            "mean": f"{draw(st.integers(10, 20_000))}k",
            "p99": "20M",
            "megapixels": draw(st.floats(0.1, 50)),
        },
        "retentionYears": draw(st.floats(0.1, 10)),
        "growthPercentPerYear": draw(st.floats(0, 100)),
        "targetUtilizationPercent": draw(st.floats(10, 100)),
        "failureBudget": {"datacenters": draw(st.integers(0, 2)), "frontendSpares": draw(st.integers(0, 3))},
    }


@st.composite
def specs(draw: st.DrawFn) -> ImageServerSpec:
    count = draw(st.integers(1, 5))
    weights = draw(st.lists(st.integers(0, 300), min_size=count, max_size=count).filter(any))
    raw = spec().model_dump(by_alias=True)
    raw["datacenters"] = [{"name": f"dc{i}", "weight": w} for i, w in enumerate(weights)]
    raw["variants"] = draw(
        st.lists(st.sampled_from(["300x300", "1200x1200", "64x64"]), max_size=3, unique=True)
    )
    raw["slo"] = {"latency": {"thresholdSeconds": draw(st.sampled_from(LATENCY_BUCKETS[3:]))}}
    raw["resources"]["frontend"]["requests"]["cpu"] = draw(st.sampled_from(["250m", "1", "2"]))
    raw["capacity"] = {**raw["capacity"], **draw(loads())}
    return ImageServerSpec.model_validate(raw)


def scaled(base: ImageServerSpec, factors: list[float]) -> ImageServerSpec:
    raw = base.model_dump(by_alias=True)
    cap = raw["capacity"]
    cap["uploadsPerSecond"] *= factors[0]
    for key, factor in zip(("variants", "onDemand", "originals"), factors[1:], strict=True):
        cap["reads"][key] *= factor
    return ImageServerSpec.model_validate(raw)


@settings(max_examples=200, deadline=None)
@given(specs(), st.lists(st.floats(1, 10), min_size=4, max_size=4))
def test_more_load_never_needs_fewer_resources(base: ImageServerSpec, factors: list[float]) -> None:
    # (A pod's own memory is left out: more load brings more pods to share the cache.)
    before, after = plan(base, COSTS), plan(scaled(base, factors), COSTS)
    for name in SERVICE:
        assert after.value(name) >= before.value(name) * (1 - 1e-9), name
    for old, new in zip(before.datacenters, after.datacenters, strict=True):
        for name in RESOURCES:
            assert new.value(name) >= old.value(name) * (1 - 1e-9), (old.name, name)


def survives(plan_: capacity.Plan, spec: ImageServerSpec) -> list[str]:
    """Why the plan's frontends would not carry the peak after losing any `failureBudget`
    datacenters (empty: they would), worked out apart from the planner's own shares."""
    cap = spec.capacity
    assert cap is not None
    active = [dc for dc in spec.datacenters if dc.weight > 0]
    pods = {p.name: p.value("frontend pods") - plan_.spares for p in plan_.datacenters}
    problems = []
    lose = min(cap.failure_budget.datacenters, max(len(active) - 1, 0))
    for lost in itertools.combinations([dc.name for dc in active], lose):
        left = [dc for dc in active if dc.name not in lost]
        weight = sum(dc.weight for dc in left)
        for dc in left:
            load = dc.weight / weight * plan_.demand_cores
            cores = pods[dc.name] * plan_.cores_per_pod
            if load > cores * plan_.utilization + 1e-6:
                problems.append(
                    f"without {', '.join(lost)}: {dc.name} needs {load:.3g} cores, has {cores:.3g} x "
                    f"{plan_.utilization:.0%}"
                )
    return problems


@settings(max_examples=200, deadline=None)
@given(specs())
def test_the_plan_survives_the_failure_it_declares_within_the_latency_slo(candidate: ImageServerSpec) -> None:
    planned = plan(candidate, COSTS)
    assert candidate.capacity is not None
    # Remove any failureBudget datacenters: the rest carry the peak below the utilization ...
    assert survives(planned, candidate) == []
    cap = candidate.capacity
    short = {c.resource for c in planned.short}
    if sum(dc.weight > 0 for dc in candidate.datacenters) <= cap.failure_budget.datacenters:
        assert "datacenters" in short  # nothing survives that: the plan says so
    hit = cap.reads.on_demand_hit_percent / 100
    classes = (
        (cap.uploads_per_second, planned.value("upload CPU")),
        (cap.reads.variants + cap.reads.on_demand * hit, 0.001),
        (cap.reads.on_demand * (1 - hit), 0.001 + 0.01 * cap.original_size.megapixels),
        (cap.reads.originals, planned.value("original read CPU")),
    )
    loaded = [s for rate, s in classes if rate > 0] or [s for _, s in classes]
    threshold = candidate.slo.latency.threshold_seconds
    allowed = 1 - candidate.slo.latency.objective / 100
    if any(math.exp(-threshold / s) > allowed for s in loaded):
        assert "slo.latency.thresholdSeconds" in short  # not even idle cores: said, not hidden
        return
    # ... at which every class with load meets the latency objective (M/M/1 per core).
    for seconds in loaded:
        assert math.exp(-threshold * (1 - planned.utilization) / seconds) <= allowed + 1e-9
    assert "slo.latency.thresholdSeconds" not in short


# -- the shell's inputs ------------------------------------------------------------------------


def test_the_shipped_unit_costs_were_measured_by_the_bench_not_typed() -> None:
    costs = measured()
    assert "make bench-capacity" in costs.measured_by
    assert costs.machine and "cores" in costs.machine
    datetime.date.fromisoformat(costs.measured_at)


def test_the_frontend_figures_the_planner_uses_are_the_frontends() -> None:
    assert Limits().max_bytes == capacity.UPLOAD_LIMIT_BYTES
    assert capacity.CLIENT_SHARE == CLIENT_SHARE
    frontend = imageserver_cli.parser().parse_args(["frontend", "--topology", "t.json"])
    assert frontend.cache_bytes == capacity.FRONTEND_CACHE_BYTES
    assert work_budget(1000, cache_bytes=0, resident_now=0) == capacity.MEMORY_MARGIN * 1000


@pytest.mark.parametrize(
    ("text", "value"),
    [("250m", 0.25), ("2", 2.0), ("10Gi", 10 * 2**30), ("2M", 2e6), ("1.5Ti", 1.5 * 2**40), ("3k", 3000.0)],
)
def test_quantities(text: str, value: float) -> None:
    assert parse(text) == pytest.approx(value)


def test_a_quantity_that_is_not_one_is_refused() -> None:
    with pytest.raises(ValueError, match="not a quantity"):
        parse("ten gigs")


# -- the status and the command line -------------------------------------------------------


def test_the_status_says_what_is_short_and_the_condition_names_the_resource() -> None:
    planned = plan(spec(), COSTS)
    observed = status.Observation(
        generation=1, spec=spec(), children={}, drained=frozenset(), paused=False, capacity=planned
    )
    written = status.compute(observed, {}, "2026-12-07T00:00:00Z")
    condition = next(c for c in written["conditions"] if c["type"] == "CapacityInsufficient")
    assert condition["status"] == "True"
    assert "shards: short by 180 shards" in condition["message"]
    assert written["capacity"]["short"][0].startswith("datacenters[a].frontendReplicas: short by 15 pods")
    assert written["capacity"]["replicaCapacityRps"] == pytest.approx(
        plan(spec(), COSTS).replica_capacity_rps, abs=0.1
    )
    # Without spec.capacity: neither the condition nor the plan.
    bare = status.compute(
        status.Observation(generation=1, spec=spec(), children={}, drained=frozenset(), paused=False),
        written,
        "2026-12-07T00:00:00Z",
    )
    assert "capacity" not in bare
    assert all(c["type"] != "CapacityInsufficient" for c in bare["conditions"])
    assert plan_view.status(planned)["summary"].startswith(
        "a at peak (100% of it): 17 frontend pods, 181 shards"
    )


def write(tmp_path: Path, body: dict[str, Any]) -> Path:
    path = tmp_path / "imageserver.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "imageserver.dev/v1alpha1", "kind": "ImageServer", **body}))
    return path


def test_the_command_prints_the_table_json_and_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = spec().model_dump(by_alias=True, exclude_none=True)
    path = write(tmp_path, {"metadata": {"name": "photos"}, "spec": raw})
    assert cli.main(["plan", "-f", str(path)]) == 0
    table = capsys.readouterr().out
    # The shipped (measured) costs: the figures move with them, the shape does not.
    assert "Capacity plan of photos" in table and re.search(r"shards .* UNDER: short by", table)
    assert re.search(r"frontend pods\s+\d+\s+ceil\(", table)
    assert cli.main(["plan", "-f", str(path), "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {c["resource"] for c in data["comparisons"] if c["verdict"] == "under"} >= {"shards"}
    assert cli.main(["plan", "-f", str(path), "-o", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["imageServer"] == "photos"
    assert cli.main(["plan", "-f", str(path), "--check"]) == 1


def test_the_command_refuses_what_it_cannot_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = spec().model_dump(by_alias=True, exclude_none=True)
    del raw["capacity"]
    assert cli.main(["plan", "-f", str(write(tmp_path, {"spec": raw}))]) == 2
    assert "spec.capacity is not set" in capsys.readouterr().err
    raw["shards"] = 0
    assert cli.main(["plan", "-f", str(write(tmp_path, {"spec": raw}))]) == 2
    assert "shards" in capsys.readouterr().err


def test_the_readme_worked_example_is_what_the_planner_says() -> None:
    text = README.read_text()
    example = text[text.index("<!-- capacity-example -->") :]
    manifest = re.search(r"```yaml\n(.*?)```", example, re.DOTALL)
    assert manifest is not None
    body = yaml.safe_load(manifest.group(1))
    planned = plan(ImageServerSpec.model_validate(body["spec"]), measured())
    shown = re.search(r"```\n(Capacity plan of .*?)```", example, re.DOTALL)
    assert shown is not None, "the README shows the plan's output"
    assert shown.group(1) == plan_view.table(body["metadata"]["name"], planned), (
        "the README's worked example is stale: run `make generate`"
    )


def test_a_weightless_datacenter_needs_no_pods() -> None:
    raw = spec().model_dump(by_alias=True)
    raw["datacenters"] = [
        {"name": "a"},
        {"name": "b"},
        {"name": "standby", "weight": 0, "frontendReplicas": 1},
    ]
    planned = plan(ImageServerSpec.model_validate(raw), COSTS)
    standby = next(c for c in planned.comparisons if c.resource == "datacenters[standby].frontendReplicas")
    assert (standby.planned, standby.verdict) == ("0", "ok")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"maxVolumeSize": "0"}, "capacity.maxVolumeSize is 0"),
        ({"originalSize": {"mean": "9" * 30, "p99": "9" * 31}}, "capacity.originalSize.mean"),
        ({"originalSize": {"mean": "4M", "p99": "1M"}}, "p99 is smaller than its mean"),
    ],
)
def test_figures_it_cannot_use_are_refused_with_the_field(change: dict[str, Any], words: str) -> None:
    with pytest.raises(capacity.Unplannable, match=re.escape(words)):
        plan(spec(**change), COSTS)


def test_a_frontend_without_cpu_cannot_be_planned() -> None:
    raw = spec().model_dump(by_alias=True)
    raw["resources"]["frontend"]["requests"]["cpu"] = "0m"
    with pytest.raises(capacity.Unplannable, match=r"requests\.cpu"):
        plan(ImageServerSpec.model_validate(raw), COSTS)


def observation(
    generation: int, candidate: ImageServerSpec | None, planned: Any = None
) -> status.Observation:
    return status.Observation(
        generation=generation,
        spec=candidate,
        children={},
        drained=frozenset(),
        paused=False,
        capacity=planned,
    )


def test_what_cannot_be_planned_is_unknown_and_an_unreadable_spec_keeps_the_last_plan() -> None:
    written = status.compute(observation(1, spec(), "why"), {}, "2026-12-07T00:00:00Z")
    condition = next(c for c in written["conditions"] if c["type"] == "CapacityInsufficient")
    assert (condition["status"], condition["reason"], condition["message"]) == (
        "Unknown",
        "CannotPlan",
        "cannot plan: why",
    )
    short = status.compute(observation(1, spec(), plan(spec(), COSTS)), {}, "2026-12-07T00:00:00Z")
    broken = status.compute(observation(2, None), short, "2026-12-07T01:00:00Z")
    kept = next(c for c in broken["conditions"] if c["type"] == "CapacityInsufficient")
    assert kept == next(c for c in short["conditions"] if c["type"] == "CapacityInsufficient")
    assert broken["capacity"] == short["capacity"]


def test_several_imageservers_plan_into_one_json_list_and_yaml_stream(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = spec().model_dump(by_alias=True, exclude_none=True)
    items = [
        {
            "apiVersion": "imageserver.dev/v1alpha1",
            "kind": "ImageServer",
            "metadata": {"name": n},
            "spec": raw,
        }
        for n in ("one", "two")
    ]
    path = tmp_path / "list.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
    assert cli.main(["plan", "-f", str(path), "-o", "json"]) == 0
    assert [p["imageServer"] for p in json.loads(capsys.readouterr().out)] == ["one", "two"]
    assert cli.main(["plan", "-f", str(path), "-o", "yaml"]) == 0
    assert [p["imageServer"] for p in yaml.safe_load_all(capsys.readouterr().out)] == ["one", "two"]
    assert cli.main(["plan", "-f", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_the_command_reads_a_manifest_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = spec().model_dump(by_alias=True, exclude_none=True)
    manifest = {
        "apiVersion": "imageserver.dev/v1alpha1",
        "kind": "ImageServer",
        "metadata": {"name": "piped"},
    }
    monkeypatch.setattr("sys.stdin", io.StringIO(yaml.safe_dump({**manifest, "spec": raw})))
    assert cli.main(["plan", "-f", "-", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["imageServer"] == "piped"
