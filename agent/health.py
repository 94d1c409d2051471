"""Sidecar health as the agent judges it (R-AG-4; seed defaults: TCP, 2 s timeout, 5 s
interval, 1 success to become healthy, 3 failures to become unhealthy).

A probe is healthy when the listener port accepts a TCP connection and the admin API
answers GET /ready with 200. rise/fall debounce the verdict so one slow answer does not
flip interception off and on.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class HealthSpec:
    host: str = "127.0.0.1"
    port: int = 15001  # a listener the intercepted traffic goes to
    admin_port: int = 15000
    timeout: float = 2.0
    interval: float = 5.0
    rise: int = 1
    fall: int = 3


def probe(spec: HealthSpec) -> tuple[bool, str]:
    """One check: (ok, why)."""
    try:
        with socket.create_connection((spec.host, spec.port), timeout=spec.timeout):
            pass
    except OSError as exc:
        return False, f"tcp {spec.host}:{spec.port}: {exc.strerror or exc}"
    conn = http.client.HTTPConnection(spec.host, spec.admin_port, timeout=spec.timeout)
    try:
        conn.request("GET", "/ready")
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return False, f"admin /ready: {exc}"
    finally:
        conn.close()
    return (status == 200, "ready" if status == 200 else f"admin /ready answered {status}")


@dataclass
class Health:
    """Debounced verdict: starts unhealthy; `rise` passes make it healthy, `fall` fails
    in a row make it unhealthy again."""

    spec: HealthSpec
    check: Callable[[HealthSpec], tuple[bool, str]] = probe
    healthy: bool = False
    reason: str = "not checked yet"
    _passes: int = 0
    _fails: int = 0

    def observe(self) -> bool:
        ok, self.reason = self.check(self.spec)
        if ok:
            self._passes, self._fails = self._passes + 1, 0
            if not self.healthy and self._passes >= self.spec.rise:
                self.healthy = True
        else:
            self._passes, self._fails = 0, self._fails + 1
            if self.healthy and self._fails >= self.spec.fall:
                self.healthy = False
        return self.healthy
