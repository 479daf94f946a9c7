"""format=auto: AVIF, WebP or the original's format from Accept. The format chosen is in the
variant, so in its ETag and cache key: a browser never gets a format it did not ask for."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imageserver import variants
from imageserver.variants import Size, Variant

CHROME = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
SAFARI_15 = "image/webp,image/png,image/svg+xml,image/*;q=0.8,video/*;q=0.8,*/*;q=0.5"
OLD = "image/png,image/*;q=0.8,*/*;q=0.5"


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (CHROME, "avif"),
        (SAFARI_15, "webp"),
        (OLD, None),  # image/* is no promise of either: the original's format
        ("*/*", None),
        ("", None),
        (None, None),
        ("image/avif;q=0, image/webp", "webp"),  # q=0: not acceptable
        ("image/webp;q=0.9, image/avif;q=0.5", "webp"),  # the client's preference wins
        ("image/webp, image/avif", "avif"),  # a tie: AVIF, the smaller
        ("IMAGE/AVIF", "avif"),  # media types are case-insensitive
        ("image/avif ; q=0.7", "avif"),
        ("image/avif;q=2", None),  # not a weight: no consent read from it
        ("image/avif;q=abc", None),
        ("image/avif;level=1;q=0.5", "avif"),
        ("image/avifx, image/webpp", None),
        ("image/avif" + ",x" * 5000, "avif"),  # a long header: only its start is read
    ],
)
def test_the_format_auto_picks(accept: str | None, chosen: str | None) -> None:
    assert variants.negotiate(accept) == chosen


@given(st.text(max_size=200))
def test_auto_never_picks_a_format_the_header_does_not_name(accept: str) -> None:
    chosen = variants.negotiate(accept)
    assert chosen is None or variants.CONTENT_TYPES[chosen] in accept.lower()


def test_auto_puts_the_chosen_format_in_the_variant_its_etag_and_blob_name() -> None:
    query = {"w": "300", "h": "300", "format": "auto"}
    avif = variants.parse(query, max_dimension=4096, accept=CHROME)
    webp = variants.parse(query, max_dimension=4096, accept=SAFARI_15)
    plain = variants.parse(query, max_dimension=4096, accept=OLD)
    assert (avif, webp, plain) == (
        Variant(Size(300, 300), format="avif"),
        Variant(Size(300, 300), format="webp"),
        Variant(Size(300, 300)),  # the one the upload rendered
    )
    tags = {variants.etag("ab" * 32, v) for v in (avif, webp, plain)}
    assert len(tags) == 3 and all(v is not None for v in (avif, webp, plain))
    assert variants.varies(query, "original")


@pytest.mark.parametrize(
    ("query", "default", "varies"),
    [
        ({"w": "300", "h": "300"}, "original", False),
        ({"w": "300", "h": "300"}, "auto", True),  # the deployment's default
        ({"w": "300", "h": "300", "format": "webp"}, "auto", False),  # named: no negotiation
        ({"w": "300", "h": "300", "format": "auto"}, "original", True),
        ({}, "auto", False),  # the original is the original
    ],
)
def test_what_varies_with_accept(
    query: dict[str, str], default: variants.DefaultFormat, varies: bool
) -> None:
    assert variants.varies(query, default) is varies
    variant = variants.parse(query, max_dimension=4096, accept=CHROME, default_format=default)
    assert (variant is not None and variant.format == "avif") is varies


def test_negotiated_formats_of_allowlisted_sizes_need_no_signature_others_do() -> None:
    allow = variants.default_allowlist()
    assert variants.is_allowlisted_size(Variant(Size(300, 300), format="avif"), allow)
    assert variants.is_allowlisted_size(Variant(Size(300, 300)), allow)
    assert not variants.is_allowlisted_size(Variant(Size(300, 300), format="png"), allow)
    assert not variants.is_allowlisted_size(Variant(Size(300, 300), "cover", "avif"), allow)
    assert not variants.is_allowlisted_size(Variant(Size(301, 300), format="avif"), allow)


@given(st.text(max_size=300))
def test_any_accept_header_gives_a_variant(accept: str) -> None:
    variant = variants.parse({"w": "300", "h": "300", "format": "auto"}, max_dimension=4096, accept=accept)
    assert variant is not None and variant.format in (None, *variants.NEGOTIATED)


def test_a_build_that_cannot_write_avif_never_offers_it() -> None:
    assert variants.negotiate(CHROME, ("webp",)) == "webp"
    assert variants.negotiate("image/avif", ("webp",)) is None
    with pytest.raises(variants.BadVariant, match="format avif cannot be encoded here"):
        variants.parse({"w": "9", "h": "9", "format": "avif"}, max_dimension=4096, negotiable=("webp",))
