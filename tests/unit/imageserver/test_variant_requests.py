"""Variant queries, the allowlist, ETags and HMAC signatures."""

from __future__ import annotations

import pytest

from imageserver import variants
from imageserver.variants import BadVariant, Size, Variant

ID = "ab" * 32
KEY = b"test-signing-key"


def parse(query: dict[str, str]) -> Variant | None:
    return variants.parse(query, max_dimension=4096)


def test_no_size_means_the_original() -> None:
    assert parse({}) is None


def test_a_size_with_defaults_is_an_allowlisted_variant() -> None:
    variant = parse({"w": "300", "h": "300"})
    assert variant == Variant(Size(300, 300))
    assert variants.is_allowlisted(variant, variants.default_allowlist())
    assert not variants.is_allowlisted(Variant(Size(300, 300), "cover"), variants.default_allowlist())
    assert not variants.is_allowlisted(Variant(Size(300, 300), format="webp"), variants.default_allowlist())
    assert not variants.is_allowlisted(Variant(Size(300, 200)), variants.default_allowlist())


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"w": "300"}, "give both w and h"),
        ({"w": "0", "h": "10"}, "w must be a whole number from 1 to 4096"),
        ({"w": "10", "h": "99999"}, "h must be a whole number from 1 to 4096"),
        ({"w": "-5", "h": "10"}, "w must be a whole number"),
        ({"w": "1e3", "h": "10"}, "w must be a whole number"),
        ({"w": "10", "h": "10", "fit": "stretch"}, "fit must be contain or cover"),
        ({"w": "10", "h": "10", "format": "heic"}, "format must be one of jpeg, png, webp, avif, gif, auto"),
        ({"w": "10", "h": "10", "x": "1"}, "unknown query parameter(s): x"),
        ({"format": "png"}, "fit and format need a size"),
    ],
)
def test_bad_queries_are_refused_with_a_reason(query: dict[str, str], message: str) -> None:
    with pytest.raises(BadVariant) as refused:
        parse(query)
    assert message in str(refused.value)


def test_etags_are_known_without_rendering_and_differ_per_variant() -> None:
    assert variants.etag(ID, None) == f'"{ID}"'
    cover = Variant(Size(300, 200), "cover", "webp")
    # A variant's tag names the renderer: another rendering of it is another entity.
    assert variants.etag(ID, cover) == f'"{ID}.300x200-cover.webp.r{variants.renderer()}"'
    assert variants.etag(ID, Variant(Size(300, 200))) != variants.etag(ID, cover)


def test_if_none_match_follows_weak_comparison_and_lists() -> None:
    tag = variants.etag(ID, None)
    assert variants.etag_matches(tag, tag)
    assert variants.etag_matches(f'"other", W/{tag}', tag)
    assert not variants.etag_matches('"other"', tag)
    assert not variants.etag_matches(None, tag)


def test_if_none_match_star_is_not_a_tag_it_asks_whether_the_image_exists() -> None:
    # RFC 9110 13.1.2: "*" is false only when a current representation exists, which only a
    # lookup can tell; matching it as a tag answered 304 for images that do not exist.
    assert not variants.etag_matches("*", variants.etag(ID, None))
    assert variants.matches_any("*") and variants.matches_any(" * ")
    assert not variants.matches_any(None) and not variants.matches_any('"*"')


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"w": "²", "h": "1"}, "w must be a whole number"),  # isdigit() says yes, int() says no
        ({"w": "\uff13\uff10\uff10", "h": "300"}, "w must be a whole number"),  # fullwidth 300
        ({"w": "300", "h": "300 "}, "h must be a whole number"),
        ({"w": "0300", "h": "300"}, ""),  # leading zeros are still ASCII digits: fine
        ({"w": "300", "h": "300", "sig": "é" * 43}, "sig must be a signature"),
        ({"w": "300", "h": "300", "sig": "A" * 44}, "sig must be a signature"),
        ({"w": "300", "h": "300", "fit": "c" * 65}, "longer than 64"),
        ({"\udcff": "1"}, "unknown query parameter(s): '\\udcff'"),
    ],
)
def test_what_is_not_ascii_digits_or_a_signature_is_a_clear_400(query: dict[str, str], message: str) -> None:
    if not message:
        assert parse(query) == Variant(Size(300, 300))
        return
    with pytest.raises(BadVariant) as refused:
        parse(query)
    assert message in str(refused.value)


def test_a_repeated_parameter_is_refused_not_read_first_or_last_wins() -> None:
    with pytest.raises(BadVariant, match="give w only once"):
        variants.single_values([("w", "300"), ("h", "300"), ("w", "1200")])
    assert variants.single_values([("w", "300"), ("h", "300")]) == {"w": "300", "h": "300"}


def test_a_non_ascii_signature_is_invalid_not_an_error() -> None:
    query = {"w": "300", "h": "200", "sig": "é" * 43}
    assert not variants.signature_valid(KEY, f"/v1/images/{ID}", query)  # no TypeError


def test_signatures_cover_every_parameter_in_any_order_and_only_the_right_key_verifies() -> None:
    path = f"/v1/images/{ID}"
    query = {"w": "300", "h": "200", "fit": "cover"}
    signed = {**query, "sig": variants.sign(KEY, path, query)}
    assert variants.signature_valid(KEY, path, signed)
    reordered = {"fit": "cover", "h": "200", "w": "300", "sig": signed["sig"]}
    assert variants.signature_valid(KEY, path, reordered)
    assert not variants.signature_valid(b"another-key", path, signed)
    assert not variants.signature_valid(KEY, path, {**signed, "w": "3000"})
    assert not variants.signature_valid(KEY, f"/v1/images/{'cd' * 32}", signed)
    assert not variants.signature_valid(KEY, path, query)  # no sig at all
    assert not variants.signature_valid(KEY, path, {**query, "sig": ""})


def test_sizes_parse_from_configuration() -> None:
    assert Size.parse("1200x800") == Size(1200, 800)
    for bad in ("1200", "0x5", "axb", "5x-1"):
        with pytest.raises(ValueError, match="is not a size"):
            Size.parse(bad)
