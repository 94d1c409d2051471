"""The "max requests" gate: at most N requests in flight per app port (R-SC-3).

Counters live in shared memory (one int per port) so that all workers of one sidecar share
the limit; a lock makes check-and-increment atomic across processes. The limit itself is
read from the current config on every request, so a reload changes it in place.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any

PORTS = 65536


class Gate:
    def __init__(self, *, shared: bool) -> None:
        # Created before workers fork, so every worker maps the same pages.
        ctx = multiprocessing.get_context("fork")
        self._inflight: Any = ctx.RawArray("i", PORTS)
        self._lock: Any = ctx.Lock() if shared else None
        self.limit_for: Callable[[int], int] = lambda port: 0

    def try_acquire(self, port: int) -> tuple[int, bool]:
        """(limit, admitted): limit 0 means unlimited (admitted, nothing to release);
        admitted with a limit means a slot was taken and must be released."""
        limit = self.limit_for(port)
        if limit == 0:
            return 0, False
        lock = self._lock
        if lock is not None:
            lock.acquire()
        try:
            if self._inflight[port] >= limit:
                return limit, False
            self._inflight[port] += 1
            return limit, True
        finally:
            if lock is not None:
                lock.release()

    def release(self, port: int) -> None:
        lock = self._lock
        if lock is not None:
            lock.acquire()
        try:
            if self._inflight[port] > 0:
                self._inflight[port] -= 1
        finally:
            if lock is not None:
                lock.release()

    def inflight(self, port: int) -> int:
        return int(self._inflight[port])
