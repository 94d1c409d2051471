"""How the pages show numbers and times (Jinja filters). Times are shown in UTC, and say so."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

DASH = "\u2014"


def when(value: datetime | None) -> str:
    if value is None:
        return DASH
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def size(value: float) -> str:
    """Bytes in binary units: 512 B, 1.5 KiB, 3.2 MiB."""
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def percent(rate: float) -> str:
    """A 0..1 ratio as a percentage."""
    return f"{rate * 100:.2f} %"


def number(value: float) -> str:
    """At most three decimals, no trailing zeros."""
    text = f"{value:,.3f}".rstrip("0").rstrip(".")
    return text or "0"


def limit(value: int) -> str:
    return "unlimited" if value == 0 else f"{value:,}"


FILTERS: dict[str, Callable[..., Any]] = {
    "when": when,
    "size": size,
    "percent": percent,
    "number": number,
    "limit": limit,
}
