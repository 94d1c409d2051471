"""Pure validators for names, ports, ranges, CIDRs and node addresses.

Each returns the canonical form or raises ValueError with a message that pydantic puts
next to the field's location. The console does not import hijack/: it validates the same
rules itself (the API tests check that hijack/config.py accepts what the console sends).
"""

from __future__ import annotations

import functools
import ipaddress
import re

APP_NAME_RE = re.compile(r"^[A-Za-z0-9-]{1,63}$")
# Tenants, workspaces, instance IDs and user names: shell- and URL-safe.
SCOPE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
PORT_MIN, PORT_MAX = 1, 65535
# R-HJ-1: blacklist entries live in [1025, 65535].
EXCLUDABLE_MIN = 1025
MAX_REQUESTS_MAX = 2_147_483_647


def app_name(value: str) -> str:
    if not APP_NAME_RE.fullmatch(value):  # fullmatch: "$" would let "web\n" through
        raise ValueError("app names are 1 to 63 letters, digits and '-'")
    return value


def scope_name(value: str) -> str:
    if not SCOPE_NAME_RE.fullmatch(value):
        raise ValueError(
            "1 to 63 letters, digits, '_', '.' and '-', starting with a letter or digit"
        )
    return value


def port_range(value: int | str) -> str:
    """A port or range in [1025, 65535] as "8080" or "8000-8100" (also accepts 8000:8100)."""
    if isinstance(value, int):
        first = last = value
    else:
        parts = value.strip().replace(":", "-").split("-")
        if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"{value!r} is not a port or a range like 8000-8100")
        first, last = int(parts[0]), int(parts[-1])
    for port in (first, last):
        if not EXCLUDABLE_MIN <= port <= PORT_MAX:
            raise ValueError(f"port {port} is outside [{EXCLUDABLE_MIN}, {PORT_MAX}]")
    if first > last:
        raise ValueError(f"range {first}-{last} is reversed")
    return str(first) if first == last else f"{first}-{last}"


def port_range_input(value: object) -> str:
    """`port_range` for raw JSON input: an integer or a string, never a boolean."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError('expected a port (integer) or a range like "8000-8100"')
    if isinstance(value, str) and len(value) > 11:
        raise ValueError(f"{value[:12]!r}... is not a port or a range like 8000-8100")
    return port_range(value)


def cidr(value: str) -> str:
    """An IPv4 or IPv6 prefix with its host bits zero; a bare address is a /32 or /128."""
    text = value.strip()
    kind = ipaddress.IPv6Network if ":" in text else ipaddress.IPv4Network
    try:
        return str(kind(text, strict=True))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid CIDR: {exc}") from None


# Remembered: the same few thousand node IPs arrive in every agent request, and parsing
# one costs more than the rest of the request's validation (errors are not remembered).
@functools.lru_cache(maxsize=65536)
def node_ip(value: str) -> str:
    """A unicast IPv4 or IPv6 address a VM can have (canonical text form)."""
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None
    if address.is_unspecified or address.is_multicast or address.is_loopback:
        raise ValueError(f"{value!r} is not a node address (unspecified, multicast or loopback)")
    if isinstance(address, ipaddress.IPv4Address) and address == ipaddress.IPv4Address(
        "255.255.255.255"
    ):
        raise ValueError(f"{value!r} is the broadcast address")
    return str(address)


def unique(values: list[str], what: str) -> list[str]:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{what} {value} is listed twice")
        seen.add(value)
    return values


def merge_ranges(ranges: list[str]) -> list[str]:
    """Sorted, overlapping and adjacent ranges merged: the form hijack/ canonicalises to."""
    pairs = sorted((int(a), int(b or a)) for a, _, b in (r.partition("-") for r in ranges))
    merged: list[list[int]] = []
    for first, last in pairs:
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return [str(a) if a == b else f"{a}-{b}" for a, b in merged]


def collapse_cidrs(cidrs: list[str]) -> list[str]:
    """IPv4 first, then IPv6, each collapsed and sorted (as hijack/ does)."""
    nets = [ipaddress.ip_network(c) for c in cidrs]
    v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in nets if isinstance(n, ipaddress.IPv6Network)]
    return [str(n) for n in ipaddress.collapse_addresses(v4)] + [
        str(n) for n in ipaddress.collapse_addresses(v6)
    ]
