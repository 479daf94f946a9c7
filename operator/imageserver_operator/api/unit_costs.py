"""The per-unit costs the capacity planner multiplies the load by.

They are measured, never typed by hand: `make bench-capacity` (bench/capacity_bench.py) runs
the data plane on this machine and writes `unit_costs.json` beside this module, with the
machine and the date. An ImageServer may override any of them (spec.capacity.unitCosts) with
figures measured on its own machines.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from imageserver_operator.api.models import UnitCostOverrides

FILE = "unit_costs.json"


class UnitCosts(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    render_seconds_per_megapixel: float = Field(gt=0)
    variant_bytes_per_megapixel: float = Field(gt=0)
    ingest_seconds_per_megabyte: float = Field(gt=0)
    cached_reads_per_core_second: float = Field(gt=0)
    original_reads_per_core_second: float = Field(gt=0)
    storage_writes_per_second: float = Field(gt=0)
    storage_write_bytes_per_second: float = Field(gt=0)
    frontend_base_memory_bytes: float = Field(gt=0)
    # Provenance: which command measured them, on what, when.
    measured_by: str = Field(min_length=1)
    machine: str = Field(min_length=1)
    measured_at: str = Field(min_length=1)

    def with_overrides(self, overrides: UnitCostOverrides) -> UnitCosts:
        given = overrides.model_dump(exclude_none=True)
        if not given:
            return self
        return self.model_copy(
            update={**given, "measured_by": f"{self.measured_by}; spec overrides {', '.join(sorted(given))}"}
        )

    def provenance(self) -> str:
        return f"{self.measured_by} on {self.machine}, {self.measured_at}"


@functools.cache
def measured() -> UnitCosts:
    """The defaults this package ships, as the bench wrote them."""
    text = resources.files("imageserver_operator.api").joinpath(FILE).read_text()
    return UnitCosts.model_validate(json.loads(text))
