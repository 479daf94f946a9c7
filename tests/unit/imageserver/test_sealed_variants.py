"""A stored variant is sealed to its name: any change to its bytes, or its use under another
name, is caught."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from imageserver import sealed

NAME = "ab" * 32 + ".300x300.r0123abcd"


@given(st.binary(max_size=2048))
def test_a_seal_opens_only_for_its_own_name_and_bytes(payload: bytes) -> None:
    data = sealed.seal(NAME, payload)
    assert sealed.unseal(NAME, data) == payload
    assert sealed.unseal(NAME.replace("300x300", "300x301"), data) is None
    assert sealed.unseal(NAME.replace(".r0123abcd", ".r0123abce"), data) is None


@given(st.binary(min_size=1, max_size=512), st.data())
def test_any_flipped_byte_breaks_the_seal(payload: bytes, data: st.DataObject) -> None:
    blob = bytearray(sealed.seal(NAME, payload))
    at = data.draw(st.integers(0, len(blob) - 1))
    blob[at] ^= data.draw(st.integers(1, 255))
    assert sealed.unseal(NAME, bytes(blob)) is None


def test_short_or_foreign_bytes_are_not_a_seal() -> None:
    for data in (b"", b"ISV1", b"\xff\xd8\xff\xe0 a plain JPEG", sealed.MAGIC + b"\0" * 31):
        assert sealed.unseal(NAME, data) is None
