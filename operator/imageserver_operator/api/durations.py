"""Durations of the ImageServer spec ("30d", "1h", "10m", "90s"): the one parser, the
longest each field may be, and the CEL rule that lets the API server hold a field to it.

A number followed by one unit: s, m, h or d. The API server refuses a value over its field's
maximum (the rule from `cel_rule`), but the operator still reads objects stored before the
rule existed, so `parse` never raises: an unbounded number makes `timedelta` overflow, and
an exception in one ImageServer's SLO cycle stops remediation for every ImageServer.
"""

from __future__ import annotations

import datetime
import re

SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
ALL_UNITS = "smhd"
ZERO = datetime.timedelta(0)

# An error budget is judged over a month or a quarter; the budget-window rule samples the
# 5m ratio across the whole window, and under a day Prometheus refuses it (a 0d range).
SLO_WINDOW_MIN = datetime.timedelta(days=1)
SLO_WINDOW_MAX = datetime.timedelta(days=90)
# A revision that ran a week without burning is no longer the likely cause of a burn, and
# rolling back further returns to a version the data and config may have moved past.
ROLLBACK_WINDOW_MAX = datetime.timedelta(days=7)
# A datacenter healthy for a day is healthy; keeping it drained longer only takes the
# remaining datacenters' headroom.
HEALTHY_PERIOD_MAX = datetime.timedelta(days=1)
# A day between actions is already almost no automation; `mode: off` is the way to ask for none.
COOLDOWN_MAX = datetime.timedelta(days=1)
# A canary wave bakes, and waits for enough requests, at most a day before a person decides.
BAKE_MAX = datetime.timedelta(days=1)
# The longest any field may be: what `parse` clamps to unless told a field's own maximum.
CEILING = max(SLO_WINDOW_MAX, ROLLBACK_WINDOW_MAX, HEALTHY_PERIOD_MAX, COOLDOWN_MAX, BAKE_MAX)

# Characters in a duration: 15 digits and the unit. Any such number fits CEL's int64 (so
# int() in the rule cannot fail), and a short string keeps the rule's estimated cost small
# enough for the API server to accept it.
MAX_LENGTH = 16

_FORMAT = re.compile(r"([0-9]+)([smhd])")  # ASCII digits only, as the schema's pattern


def parse(text: str, *, maximum: datetime.timedelta = CEILING) -> datetime.timedelta:
    """The duration `text` says, at most `maximum`; never raises.

    Longer than `maximum`, and anything that is no duration, is `maximum`. Clamping keeps
    the order of values (a longer text is never a shorter duration), and the longest is the
    cautious end for the fields that hold automation back (cooldown, healthyPeriod): a value
    the schema should have refused makes the operator act less, not more. No-durations only
    reach here past the schema's pattern, which the API server and the models both check.
    """
    match = _FORMAT.fullmatch(text)
    if match is None:
        return maximum
    digits, unit = match.group(1).lstrip("0") or "0", SECONDS[match.group(2)]
    limit = max(maximum // datetime.timedelta(seconds=unit), 0)
    # Compare lengths first: int() of a very long digit string is slow, and refused past 4300.
    if len(digits) > len(str(limit)) or int(digits) > limit:
        return maximum
    return datetime.timedelta(seconds=int(digits) * unit)


def unit_bounds(
    maximum: datetime.timedelta, minimum: datetime.timedelta = ZERO, units: str = ALL_UNITS
) -> dict[str, tuple[int, int]]:
    """Unit → the smallest and largest number of it within [minimum, maximum]."""
    bounds = {}
    for unit in units:
        size = datetime.timedelta(seconds=SECONDS[unit])
        bounds[unit] = (-(-minimum // size), maximum // size)
    return bounds


def text(duration: datetime.timedelta, units: str = ALL_UNITS) -> str:
    """A duration as a person writes it, in the largest unit that says it exactly; a whole
    number of days also in hours, when hours are allowed: 1d (24h)."""
    seconds = int(duration.total_seconds())
    exact = [u for u in units if not seconds % SECONDS[u]] or ["s"]
    unit = max(exact, key=SECONDS.__getitem__)
    said = f"{seconds // SECONDS[unit]}{unit}"
    if unit == "d" and "h" in units:
        said += f" ({seconds // SECONDS['h']}h)"
    return said


def cel_rule(
    name: str,
    maximum: datetime.timedelta,
    *,
    minimum: datetime.timedelta = ZERO,
    units: str = ALL_UNITS,
) -> dict[str, str]:
    """The x-kubernetes-validations rule (rule and message) that holds the duration field
    `name`, written in `units`, to [minimum, maximum].

    CEL's duration() knows no days and overflows on large numbers, so the rule compares the
    number with the largest count of its unit that fits, a constant per unit; nothing is
    multiplied, so nothing overflows. A value that is no duration passes here: the field's
    pattern refuses it with its own message, and the rule would fail on it.
    """
    bounds = unit_bounds(maximum, minimum, units)
    number = "int(self.substring(0, self.size() - 1))"

    def per_unit(index: int) -> str:
        if len(units) == 1:
            return str(bounds[units][index])
        table = ", ".join(f"'{u}': {bound[index]}" for u, bound in bounds.items())
        return f"{{{table}}}[self.substring(self.size() - 1)]"

    check = f"{number} <= {per_unit(1)}"
    if minimum > ZERO:
        check = f"{number} >= {per_unit(0)} && {check}"
    pattern = f"^[0-9]+({'|'.join(units)})$" if len(units) > 1 else f"^[0-9]+{units}$"
    if minimum > ZERO:
        message = (
            f"{name} must be at least {text(minimum, units)} and at most {text(maximum, units)}; "
            "got a duration outside that range"
        )
    else:
        message = f"{name} must be at most {text(maximum, units)}; got a longer duration"
    return {"rule": f"!self.matches('{pattern}') || ({check})", "message": message}


def stamp(moment: datetime.datetime) -> str:
    """A moment as the API server writes one (RFC 3339, UTC, whole seconds)."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime.datetime | None:
    """A stamp read back; None for an empty or unreadable one (a hand-edited status must not
    stop the automation)."""
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None
