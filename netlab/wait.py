"""Wait for a condition with a deadline instead of sleeping and hoping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from netlab.errors import LabTimeout

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | None],
    *,
    deadline: float,
    interval: float = 0.02,
    what: str,
) -> T:
    """Call `predicate` until it returns something truthy and return that value.

    `deadline` is in seconds from now. The predicate is always tried once more at the
    deadline, so a slow machine never loses a condition that became true while sleeping.
    Exceptions from the predicate propagate: they mean "stop waiting, this will never work".
    """
    if deadline < 0:
        raise ValueError(f"deadline must be >= 0, got {deadline}")
    if interval <= 0:
        raise ValueError(f"interval must be > 0, got {interval}")
    end = time.monotonic() + deadline
    while True:
        result = predicate()
        if result:
            return result
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise LabTimeout(f"{what} not true after {deadline}s")
        time.sleep(min(interval, remaining))
