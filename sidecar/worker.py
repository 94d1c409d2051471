"""One serving process: listeners, live connections, counters, drain.

startup() / main_loop() / shutdown() as uvicorn has them; signal handlers only set flags.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import time
from typing import TYPE_CHECKING

from sidecar.accesslog import AccessLog
from sidecar.config import SidecarConfig
from sidecar.governance import Gate
from sidecar.proxy import Downstream
from sidecar.stats import Stats

if TYPE_CHECKING:
    from sidecar.proxy import Request

log = logging.getLogger("sofamesh.sidecar")

SWEEP_INTERVAL = 1.0
DRAIN_IDLE_GRACE = 1.0  # an idle keep-alive connection is closed after this long in drain


class Worker:
    def __init__(
        self, config: SidecarConfig, listeners: list[tuple[str, socket.socket]], gate: Gate
    ) -> None:
        self.config = config
        self.listeners = listeners
        self.gate = gate
        gate.limit_for = self._limit_for
        self.stats = Stats()
        self.connections: set[Downstream] = set()
        self.servers: list[asyncio.Server] = []
        self.draining = False
        self.loop = asyncio.get_running_loop()
        self.access_log = AccessLog(config.access_log)
        self._own_ports = {config.inbound_port, config.outbound_port}
        self._sweeper: asyncio.Task[None] | None = None
        self._all_closed = asyncio.Event()

    def forget(self, conn: Downstream) -> None:
        """A connection closed; the last one to close during a drain ends the wait."""
        self.connections.discard(conn)
        if self.draining and not self.connections:
            self._all_closed.set()

    def _limit_for(self, port: int) -> int:
        return self.config.limit_for(port)

    def is_own_listener(self, dst: tuple[str, int]) -> bool:
        return dst[1] in self._own_ports

    async def startup(self) -> None:
        for direction, sock in self.listeners:
            server = await self.loop.create_server(
                functools.partial(Downstream, self, direction),
                sock=sock,
                backlog=4096,
            )
            self.servers.append(server)
        self._sweeper = self.loop.create_task(self._sweep())

    def reload(self, config: SidecarConfig) -> None:
        """Apply a new config in place: limits, timeouts, log level, access log."""
        self.config = config
        self.access_log.reconfigure(config.access_log)

    def access(self, conn: Downstream, request: Request) -> None:
        if self.access_log.enabled:
            self.access_log.request(conn, request)

    async def drain(self, timeout: float) -> None:
        """Stop accepting; let in-flight requests finish (with Connection: close); close."""
        self.draining = True
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            if not conn.busy() and time.monotonic() - conn.last_active > DRAIN_IDLE_GRACE:
                conn.idle_close()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), timeout)
        for conn in list(self.connections):
            conn._close()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            idle_limit = self.config.timeouts.idle
            head_limit = self.config.timeouts.request_head
            for conn in list(self.connections):
                quiet = now - conn.last_active
                if conn.mode != "tcp" and conn.waiting_for_head() and quiet > head_limit:
                    conn.stats.errors["timeout"] += 1
                    conn._close()  # a client that never finishes its request head
                    continue
                if quiet > idle_limit or (self.draining and quiet > DRAIN_IDLE_GRACE):
                    if conn.mode == "tcp" and not self.draining:
                        conn._close()
                    else:
                        conn.idle_close()

    def close_now(self) -> None:
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn._close()
        if self._sweeper is not None:
            self._sweeper.cancel()
