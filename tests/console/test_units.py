"""Pure parts of the console, no server: validators, password hashes, signatures, and the
config document agreeing with hijack/config.py."""

from __future__ import annotations

import time

import pytest

from console import configdoc, security, values
from hijack.config import HijackConfig

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [(1025, "1025"), ("8000-8100", "8000-8100"), ("8000:8100", "8000-8100"), (" 9000 ", "9000"),
     ("9000-9000", "9000"), (65535, "65535")],
)  # fmt: skip
def test_port_ranges(raw: int | str, canonical: str) -> None:
    assert values.port_range(raw) == canonical


@pytest.mark.parametrize("raw", [80, 1024, 65536, "9000-8000", "a", "1-2-3", "", "-5"])
def test_bad_port_ranges(raw: int | str) -> None:
    with pytest.raises(ValueError, match=r"."):
        values.port_range(raw)


def test_port_range_input_rejects_booleans_and_floats() -> None:
    for raw in (True, 8080.0, None, ["8080"], "1" * 12):
        with pytest.raises(ValueError, match=r"."):
            values.port_range_input(raw)


def test_cidrs_and_node_ips() -> None:
    assert values.cidr("10.1.2.3") == "10.1.2.3/32"
    assert values.cidr("2001:DB8::/32") == "2001:db8::/32"
    for bad in ("10.0.0.1/8", "10.0.0.0/33", "x", "2001:db8::1/32"):
        with pytest.raises(ValueError, match="not a valid CIDR"):
            values.cidr(bad)
    assert values.node_ip("2001:DB8::1") == "2001:db8::1"
    for bad in ("127.0.0.1", "::1", "0.0.0.0", "::", "224.0.0.1", "255.255.255.255", "a.b"):
        with pytest.raises(ValueError, match=r"."):
            values.node_ip(bad)


def test_names() -> None:
    assert values.app_name("a-B-9") == "a-B-9"
    for bad in ("", "a_b", "a b", "x" * 64, "ä"):
        with pytest.raises(ValueError, match="letters"):
            values.app_name(bad)
    assert values.scope_name("tenant_1.prod") == "tenant_1.prod"
    with pytest.raises(ValueError, match="letters"):
        values.scope_name("-x")


def test_canonical_lists_match_hijack() -> None:
    ranges = ["9000", "8000-8100", "8101", "8050-8060", "60000-65535"]
    cidrs = ["10.1.0.0/16", "10.0.0.0/16", "2001:db8::/33", "2001:db8:8000::/33", "1.2.3.4/32"]
    params = {
        "inbound_exclude_ports": ranges,
        "outbound_exclude_cidrs": cidrs,
        "outbound_exclude_ports": ranges[::-1],
    }
    doc = configdoc.hijack_document(params, "console.example:8470")
    assert HijackConfig.parse(doc).to_document() == doc
    assert doc["inbound"]["exclude_ports"] == ["8000-8101", "9000", "60000-65535"]
    assert doc["outbound"]["exclude_cidrs"] == ["1.2.3.4/32", "10.0.0.0/15", "2001:db8::/32"]
    v6 = configdoc.hijack_document(configdoc.EMPTY_PARAMS, "[2001:db8::1]:8470")
    assert HijackConfig.parse(v6).to_document() == v6


def test_password_hashes() -> None:
    stored = security.hash_password("s3cret-pass")
    assert stored.startswith("scrypt$")
    assert "s3cret-pass" not in stored
    assert security.verify_password("s3cret-pass", stored)
    assert not security.verify_password("s3cret-pasS", stored)
    assert not security.verify_password("x", "garbage")
    assert security.hash_password("same") != security.hash_password("same")  # salted


def test_signed_headers_parse_and_freshness() -> None:
    now = int(time.time())
    headers = {
        "x-sofamesh-key": "SMAK" + "A" * 20,
        "x-sofamesh-timestamp": str(now),
        "x-sofamesh-nonce": "ab" * 8,
        "x-sofamesh-signature": "0" * 64,
    }
    parsed = security.SignedHeaders.parse(headers)
    assert parsed.is_fresh(now + 300)
    assert not parsed.is_fresh(now + 301)
    assert not parsed.is_fresh(now - 301)
    for name, value in [("x-sofamesh-nonce", "ab"), ("x-sofamesh-timestamp", "-1"),
                        ("x-sofamesh-signature", "zz"), ("x-sofamesh-key", "")]:  # fmt: skip
        with pytest.raises(ValueError, match="X-Sofamesh"):
            security.SignedHeaders.parse({**headers, name: value})


def test_string_to_sign_sorts_the_query() -> None:
    one = security.string_to_sign(
        method="get", path="/p", raw_query="b=2&a=1", body=b"", timestamp="1", nonce="n"
    )
    two = security.string_to_sign(
        method="GET", path="/p", raw_query="a=1&b=2", body=b"", timestamp="1", nonce="n"
    )
    assert one == two
    assert (
        one.split(b"\n")[3] == b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
