"""Durations of the spec: one parser that never raises and never overflows, and CEL rules
that hold each field to its maximum."""

from __future__ import annotations

import datetime
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imageserver_operator.api import crds, durations
from imageserver_operator.api.models import DURATION, RemediationSpec
from imageserver_operator.core import policy

DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)

# field (path in the spec), its maximum, its minimum, its units
FIELDS = {
    "slo.window": (durations.SLO_WINDOW_MAX, durations.SLO_WINDOW_MIN, "d"),
    "remediation.rollback.window": (durations.ROLLBACK_WINDOW_MAX, durations.ZERO, "smhd"),
    "remediation.drain.healthyPeriod": (durations.HEALTHY_PERIOD_MAX, durations.ZERO, "smhd"),
    "remediation.cooldown": (durations.COOLDOWN_MAX, durations.ZERO, "smhd"),
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0s", durations.ZERO),
        ("90s", datetime.timedelta(seconds=90)),
        ("10m", datetime.timedelta(minutes=10)),
        ("1h", HOUR),
        ("30d", 30 * DAY),
        ("007m", datetime.timedelta(minutes=7)),
        ("90d", 90 * DAY),
        ("2160h", 90 * DAY),
        ("91d", durations.CEILING),
        ("1000000000d", durations.CEILING),
        ("9" * 5000 + "s", durations.CEILING),  # past int()'s 4300-digit limit
        ("", durations.CEILING),
        ("10", durations.CEILING),
        ("m", durations.CEILING),
        ("-5m", durations.CEILING),
        ("1.5h", durations.CEILING),
        ("10M", durations.CEILING),
        ("10m ", durations.CEILING),
        ("10m\n", durations.CEILING),
        ("٣d", durations.CEILING),  # a digit, but not one the schema's [0-9] allows
    ],
)
def test_parse(text: str, expected: datetime.timedelta) -> None:
    assert durations.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "maximum", "expected"),
    [
        ("1d", durations.HEALTHY_PERIOD_MAX, DAY),
        ("24h", durations.HEALTHY_PERIOD_MAX, DAY),
        ("86400s", durations.HEALTHY_PERIOD_MAX, DAY),
        ("86401s", durations.HEALTHY_PERIOD_MAX, DAY),
        ("1000000000d", durations.HEALTHY_PERIOD_MAX, DAY),
        ("soon", durations.COOLDOWN_MAX, DAY),
        ("8d", durations.ROLLBACK_WINDOW_MAX, 7 * DAY),
        ("1d", durations.ZERO, durations.ZERO),
    ],
)
def test_parse_clamps_to_the_maximum_it_is_given(
    text: str, maximum: datetime.timedelta, expected: datetime.timedelta
) -> None:
    assert durations.parse(text, maximum=maximum) == expected


def test_the_policy_reads_an_absurd_duration_as_the_longest_instead_of_overflowing() -> None:
    assert policy.duration("1000000000d") == durations.CEILING
    assert policy.duration("10m") == datetime.timedelta(minutes=10)


def test_the_maxima_are_what_the_fields_promise() -> None:
    assert durations.SLO_WINDOW_MIN == DAY
    assert durations.SLO_WINDOW_MAX == 90 * DAY
    assert durations.ROLLBACK_WINDOW_MAX == 7 * DAY
    assert durations.HEALTHY_PERIOD_MAX == DAY
    assert durations.COOLDOWN_MAX == DAY
    assert max(maximum for maximum, _, _ in FIELDS.values()) == durations.CEILING


def test_every_default_is_within_its_field_range() -> None:
    spec = RemediationSpec()
    for text, maximum in (
        (spec.cooldown, durations.COOLDOWN_MAX),
        (spec.rollback.window, durations.ROLLBACK_WINDOW_MAX),
        (spec.drain.healthy_period, durations.HEALTHY_PERIOD_MAX),
    ):
        assert durations.parse(text) <= maximum


@given(st.text())
def test_parse_never_raises_and_stays_within_the_ceiling(text: str) -> None:
    assert durations.ZERO <= durations.parse(text) <= durations.CEILING


@given(st.from_regex(DURATION, fullmatch=True))
def test_parse_never_raises_on_any_text_the_pattern_admits(text: str) -> None:
    assert durations.ZERO <= durations.parse(text) <= durations.CEILING


@given(
    st.integers(min_value=0, max_value=10**30),
    st.integers(min_value=0, max_value=10**30),
    st.sampled_from("smhd"),
    st.sampled_from([durations.CEILING, durations.HEALTHY_PERIOD_MAX, durations.ROLLBACK_WINDOW_MAX]),
)
def test_parse_is_monotone_in_the_number_and_clamps_at_the_maximum(
    a: int, b: int, unit: str, maximum: datetime.timedelta
) -> None:
    low, high = sorted((a, b))
    parsed_low = durations.parse(f"{low}{unit}", maximum=maximum)
    parsed_high = durations.parse(f"{high}{unit}", maximum=maximum)
    assert parsed_low <= parsed_high <= maximum
    exact = low * durations.SECONDS[unit]
    if exact <= maximum.total_seconds():
        assert parsed_low == datetime.timedelta(seconds=exact)
    else:
        assert parsed_low == maximum


def _field_schema(path: str) -> dict[str, object]:
    node = crds.imageserver_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for name in path.split("."):
        node = node["properties"][name]
    return dict(node)


@pytest.mark.parametrize("path", FIELDS)
def test_each_duration_field_carries_its_rule_and_a_length_bound(path: str) -> None:
    maximum, minimum, units = FIELDS[path]
    schema = _field_schema(path)
    assert schema["maxLength"] == durations.MAX_LENGTH
    assert schema["x-kubernetes-validations"] == [
        durations.cel_rule(path.rsplit(".", 1)[-1], maximum, minimum=minimum, units=units)
    ]
    assert isinstance(schema["description"], str)
    assert durations.text(maximum, units).split(" ")[0] in schema["description"]


def test_a_number_within_the_length_bound_fits_cel_int64() -> None:
    assert int("9" * (durations.MAX_LENGTH - 1)) < 2**63


@pytest.mark.parametrize(
    ("name", "maximum", "minimum", "units", "rule", "message"),
    [
        (
            "healthyPeriod",
            durations.HEALTHY_PERIOD_MAX,
            durations.ZERO,
            "smhd",
            "!self.matches('^[0-9]+(s|m|h|d)$') || (int(self.substring(0, self.size() - 1)) <= "
            "{'s': 86400, 'm': 1440, 'h': 24, 'd': 1}[self.substring(self.size() - 1)])",
            "healthyPeriod must be at most 1d (24h); got a longer duration",
        ),
        (
            "window",
            durations.ROLLBACK_WINDOW_MAX,
            durations.ZERO,
            "smhd",
            "!self.matches('^[0-9]+(s|m|h|d)$') || (int(self.substring(0, self.size() - 1)) <= "
            "{'s': 604800, 'm': 10080, 'h': 168, 'd': 7}[self.substring(self.size() - 1)])",
            "window must be at most 7d (168h); got a longer duration",
        ),
        (
            "window",
            durations.SLO_WINDOW_MAX,
            durations.SLO_WINDOW_MIN,
            "d",
            "!self.matches('^[0-9]+d$') || (int(self.substring(0, self.size() - 1)) >= 1 && "
            "int(self.substring(0, self.size() - 1)) <= 90)",
            "window must be at least 1d and at most 90d; got a duration outside that range",
        ),
    ],
)
def test_cel_rule(
    name: str,
    maximum: datetime.timedelta,
    minimum: datetime.timedelta,
    units: str,
    rule: str,
    message: str,
) -> None:
    assert durations.cel_rule(name, maximum, minimum=minimum, units=units) == {
        "rule": rule,
        "message": message,
    }


def _cel_admits(rule: str, text: str) -> bool:
    """What the rule says of `text`, evaluated the way the API server would for the shapes
    `cel_rule` writes (no CEL interpreter here; the e2e suite runs the real one)."""
    guard = re.fullmatch(r"!self\.matches\('(.+?)'\) \|\| \((.+)\)", rule)
    assert guard is not None, rule
    if not re.search(guard.group(1), text):
        return True
    number = int(text[:-1])
    check = guard.group(2).replace("int(self.substring(0, self.size() - 1))", str(number))
    check = check.replace("self.substring(self.size() - 1)", repr(text[-1])).replace("&&", "and")
    admitted = eval(check, {"__builtins__": {}})  # the rule's arithmetic is Python's too
    assert isinstance(admitted, bool)
    return admitted


@pytest.mark.parametrize("path", FIELDS)
def test_the_cel_rule_and_parse_agree_on_the_boundaries(path: str) -> None:
    maximum, minimum, units = FIELDS[path]
    rule = durations.cel_rule("field", maximum, minimum=minimum, units=units)["rule"]
    for unit, (low, high) in durations.unit_bounds(maximum, minimum, units).items():
        size = datetime.timedelta(seconds=durations.SECONDS[unit])
        # The largest count of each unit is admitted and read as exactly that, within the maximum.
        assert _cel_admits(rule, f"{high}{unit}")
        assert durations.parse(f"{high}{unit}", maximum=maximum) == high * size <= maximum
        # One more is refused, and read as the maximum.
        assert not _cel_admits(rule, f"{high + 1}{unit}")
        assert (high + 1) * size > maximum
        assert durations.parse(f"{high + 1}{unit}", maximum=maximum) == maximum
        # The longest number the length bound lets through is refused, not overflowed.
        assert not _cel_admits(rule, "9" * (durations.MAX_LENGTH - 1) + unit)
        if minimum > durations.ZERO:
            assert _cel_admits(rule, f"{low}{unit}")
            assert not _cel_admits(rule, f"{low - 1}{unit}")
            assert (low - 1) * size < minimum <= low * size
