"""Who a request is from: the peer, unless the peer is a proxy we trust, and then only what
our own proxies wrote. A client cannot choose its identity (and so escape its per-client
limit or jump the fair queue) by writing X-Forwarded-For itself."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imageserver.admission import client_of, parse_networks

PROXIES = parse_networks("10.0.0.0/8,fd00::/8")


def digits(text: str, zero: int) -> str:
    """`text` with its ASCII digits written in another script (ipaddress must not accept them)."""
    return text.translate({ord("0") + i: zero + i for i in range(10)})


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        pytest.param("203.0.113.7", [], "203.0.113.7", id="no header"),
        pytest.param("203.0.113.7", ["198.51.100.1"], "203.0.113.7", id="header ignored"),
        pytest.param("203.0.113.7", ["10.0.0.1"], "203.0.113.7", id="claiming to be a proxy"),
        pytest.param("10.0.0.1", ["198.51.100.1"], "10.0.0.1", id="even a private peer"),
        pytest.param("2001:db8::7", ["198.51.100.1"], "2001:db8::/64", id="ipv6 peer"),
    ],
)
def test_without_trusted_proxies_the_peer_is_the_client_whatever_the_header_says(
    peer: str, forwarded: list[str], expected: str
) -> None:
    assert client_of(peer, forwarded, ()) == expected


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        pytest.param("10.0.0.1", ["198.51.100.1"], "198.51.100.1", id="one proxy"),
        # A client may write anything left of what our proxy appended: never believed.
        pytest.param("10.0.0.1", ["6.6.6.6, 198.51.100.1"], "198.51.100.1", id="rightmost untrusted"),
        pytest.param(
            "10.0.0.1", ["6.6.6.6", "198.51.100.1, 10.2.2.2"], "198.51.100.1", id="headers joined in order"
        ),
        pytest.param("10.0.0.1", ["198.51.100.1,10.3.3.3 , 10.2.2.2"], "198.51.100.1", id="proxy chain"),
        pytest.param("10.0.0.1", ["10.3.3.3, 10.2.2.2"], "10.3.3.3", id="only proxies: the farthest"),
        pytest.param("10.0.0.1", [], "10.0.0.1", id="no header: the proxy itself"),
        # Malformed hops stop the walk at the last address that parsed.
        pytest.param("10.0.0.1", ["6.6.6.6, garbage"], "10.0.0.1", id="malformed first hop"),
        pytest.param("10.0.0.1", ["6.6.6.6, junk, 10.2.2.2"], "10.2.2.2", id="malformed behind a proxy"),
        pytest.param("10.0.0.1", ["6.6.6.6, "], "10.0.0.1", id="empty hop"),
        pytest.param("10.0.0.1", ["198.51.100.1:4711"], "10.0.0.1", id="hop with a port"),
        pytest.param("10.0.0.1", [" 198.51.100.1 "], "198.51.100.1", id="spaces around a hop"),
        # IPv6, written in any of its forms, is given back in one canonical spelling.
        # An IPv6 client is its /64: a host is given a whole one, and could rotate within it.
        pytest.param("fd00::1", ["2001:DB8:0:0::9"], "2001:db8::/64", id="ipv6 canonical"),
        pytest.param("fd00::1", ["2001:db8::9, fd00::2"], "2001:db8::/64", id="ipv6 chain"),
        pytest.param("10.0.0.1", ["2001:db8::9"], "2001:db8::/64", id="ipv6 behind ipv4 proxy"),
        pytest.param("fd00::1", ["[2001:db8::9]"], "fd00::/64", id="bracketed ipv6 is malformed"),
    ],
)
def test_behind_trusted_proxies_the_client_is_the_nearest_untrusted_hop(
    peer: str, forwarded: list[str], expected: str
) -> None:
    assert client_of(peer, forwarded, PROXIES) == expected


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        pytest.param(None, "unknown", id="no peer"),
        pytest.param("", "unknown", id="empty peer"),
        pytest.param("/run/imageserver.sock", "/run/imageserver.sock", id="not an address"),
    ],
)
def test_a_peer_that_is_not_an_address_is_taken_as_is_and_never_walks_the_header(
    peer: str | None, expected: str
) -> None:
    assert client_of(peer, ["198.51.100.1"], PROXIES) == expected


@pytest.mark.parametrize(
    "hop",
    [
        pytest.param(digits("198.51.100.1", 0x0660), id="arabic-indic digits"),
        pytest.param(digits("198.51.100.1", 0xFF10), id="fullwidth digits"),
        pytest.param("\u202e1.001.15.891", id="right-to-left override"),
        pytest.param("198.51.100.1\x00", id="nul"),
        pytest.param("\udcff", id="lone surrogate"),
        pytest.param("198.51.100.1\uff0c10.2.2.2", id="fullwidth comma"),
        pytest.param("x" * 100_000, id="very long"),
    ],
)
def test_hostile_unicode_in_the_header_is_malformed_never_an_error(hop: str) -> None:
    assert client_of("10.0.0.1", [hop], PROXIES) == "10.0.0.1"


@given(peer=st.one_of(st.none(), st.text(), st.ip_addresses().map(str)), forwarded=st.lists(st.text()))
def test_any_header_gives_a_string_and_never_raises(peer: str | None, forwarded: list[str]) -> None:
    assert isinstance(client_of(peer, forwarded, PROXIES), str)


@given(
    peer=st.ip_addresses().map(str),
    forwarded=st.lists(st.one_of(st.text(), st.ip_addresses().map(str)), max_size=4),
)
def test_a_spoofing_client_cannot_pick_its_identity(peer: str, forwarded: list[str]) -> None:
    # Untrusted peer: the header does not matter at all (an IPv4-mapped IPv6 peer is the
    # IPv4 address it carries).
    address = ipaddress.ip_address(peer)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        expected = str(address.ipv4_mapped)
    elif isinstance(address, ipaddress.IPv6Address):
        expected = str(ipaddress.IPv6Network((address, 64), strict=False))
    else:
        expected = str(address)
    assert client_of(peer, forwarded, ()) == expected


# -- the trusted proxy list from configuration ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("127.0.0.1/32,10.0.0.0/8", ("127.0.0.1/32", "10.0.0.0/8"), id="cidrs"),
        pytest.param("10.1.2.3", ("10.1.2.3/32",), id="single address"),
        pytest.param("::1, fd00::/8", ("::1/128", "fd00::/8"), id="ipv6 and spaces"),
        pytest.param("10.1.2.3/8", ("10.0.0.0/8",), id="host bits are dropped"),
        pytest.param(" , 10.0.0.0/8,, ", ("10.0.0.0/8",), id="blank parts ignored"),
        pytest.param("", (), id="empty"),
    ],
)
def test_trusted_proxies_parse_from_a_comma_list(text: str, expected: tuple[str, ...]) -> None:
    assert parse_networks(text) == tuple(ipaddress.ip_network(n) for n in expected)


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        pytest.param("10.0.0.0/8,localhost", "localhost", id="a name"),
        pytest.param("10.0.0.0/33", "10.0.0.0/33", id="prefix too long"),
        pytest.param("10.0.0.0/8, 300.1.1.1 ", "300.1.1.1", id="octet out of range"),
    ],
)
def test_a_bad_part_of_the_proxy_list_is_named(text: str, bad: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"'{bad}' is not an address or a network")):
        parse_networks(text)
