"""Typed values for ports, port ranges and CIDRs that parse (and validate) themselves.

Strings stop here: everything past the config edge holds these values.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from hijack.errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PORT_MIN = 1
PORT_MAX = 65535
# R-HJ-1: blacklist entries live in [1025, 65535]; 80 and 1..1024 are fixed by the product.
EXCLUDABLE_MIN = 1025


@dataclass(frozen=True, order=True)
class PortRange:
    """An inclusive TCP port range; a single port has first == last."""

    first: int
    last: int

    @classmethod
    def parse(cls, value: object, field: str, *, minimum: int = PORT_MIN) -> PortRange:
        """Parse 8080, "8080" or "8000-8100" (also "8000:8100")."""
        if isinstance(value, bool):
            raise ConfigError(field, f"expected a port or range, got {value!r}")
        if isinstance(value, int):
            first = last = value
        elif isinstance(value, str):
            text = value.strip().replace(":", "-")
            parts = text.split("-")
            if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
                raise ConfigError(field, f"{value!r} is not a port or a range like 8000-8100")
            first, last = int(parts[0]), int(parts[-1])
        else:
            raise ConfigError(field, f"expected a port or range, got {type(value).__name__}")
        for port in (first, last):
            if not minimum <= port <= PORT_MAX:
                raise ConfigError(field, f"port {port} is outside [{minimum}, {PORT_MAX}]")
        if first > last:
            raise ConfigError(field, f"range {first}-{last} is reversed")
        return cls(first, last)

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"

    def contains(self, port: int) -> bool:
        return self.first <= port <= self.last


def parse_port(value: object, field: str) -> int:
    """Parse a single port number (1..65535)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(field, f"expected a port number, got {value!r}")
    if isinstance(value, str):
        if not value.strip().isdigit():
            raise ConfigError(field, f"{value!r} is not a port number")
        value = int(value)
    if not PORT_MIN <= value <= PORT_MAX:
        raise ConfigError(field, f"port {value} is outside [{PORT_MIN}, {PORT_MAX}]")
    return value


def merge_ranges(ranges: Iterable[PortRange]) -> tuple[PortRange, ...]:
    """Sorted, with overlapping and adjacent ranges merged.

    nft interval sets reject overlapping elements, and a canonical form makes the plan's
    digest independent of how the operator happened to write the list.
    """
    merged: list[PortRange] = []
    for item in sorted(ranges):
        if merged and item.first <= merged[-1].last + 1:
            if item.last > merged[-1].last:
                merged[-1] = PortRange(merged[-1].first, item.last)
        else:
            merged.append(item)
    return tuple(merged)


def parse_cidr(value: object, field: str) -> IPNetwork:
    """Parse "10.0.0.0/8", "10.1.2.3" (a /32) or an IPv6 prefix; host bits must be zero."""
    if not isinstance(value, str):
        raise ConfigError(field, f"expected a CIDR string, got {value!r}")
    text = value.strip()
    # Parse with the family the text names, for a precise reason ("'33' is not a valid
    # netmask", "has host bits set") instead of ip_network's generic one.
    kind = ipaddress.IPv6Network if ":" in text else ipaddress.IPv4Network
    try:
        return kind(text, strict=True)
    except ValueError as exc:
        raise ConfigError(field, f"{value!r} is not a valid CIDR: {exc}") from None


def collapse(
    networks: Iterable[IPNetwork],
) -> tuple[tuple[ipaddress.IPv4Network, ...], tuple[ipaddress.IPv6Network, ...]]:
    """Split by family and collapse overlapping/adjacent prefixes, sorted."""
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    return (
        tuple(ipaddress.collapse_addresses(v4)),
        tuple(ipaddress.collapse_addresses(v6)),
    )
