"""The sidecar process: listeners, workers, admin API, signals, reload, drain, hot restart.

workers == 1: one process serves and answers the admin API (least memory).
workers > 1: this process forks the workers before its event loop starts, then only
answers the admin API, combines the workers' counters and relays reload/drain to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from sidecar import logs, stats
from sidecar.admin import Admin
from sidecar.children import Child, fork_workers
from sidecar.config import SidecarConfig, load_sidecar_config
from sidecar.governance import Gate
from sidecar.hotrestart import HandOver, TakenOver, read_final_stats, take_over
from sidecar.listeners import open_admin, open_listeners
from sidecar.worker import Worker

log = logging.getLogger("sofamesh.sidecar")


class Sidecar:
    """Implements admin.Control for both process models."""

    def __init__(
        self, config_path: str | Path, config: SidecarConfig, *, hot_restart: bool
    ) -> None:
        self.config_path = Path(config_path)
        self.config = config
        self.hot_restart = hot_restart
        self.started = time.monotonic()
        self.base: list[dict[str, Any]] = []  # counters carried over from the process we replaced
        self.worker: Worker | None = None
        self.children: list[Child] = []
        self._ready = False
        self._draining = False
        self._stop: asyncio.Event | None = None
        self._force = False
        self.handover: HandOver | None = None
        self.handed_over = False
        self.taken: TakenOver | None = None
        self._final: asyncio.Task[None] | None = None

    # -- admin.Control ---------------------------------------------------------------------

    def ready(self) -> bool:
        return self._ready and not self._draining

    def draining(self) -> bool:
        return self._draining

    async def stats(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started, 3),
            "workers": self.config.workers if self.children else 1,
            "ready": self.ready(),
            "draining": self._draining,
            "config_digest": self.config.digest,
            "log_level": logs.current_level(),
            "ports": stats.merge([self.base, *await self._live_ports()]),
        }

    async def set_level(self, level: str) -> None:
        logs.set_level(level)
        for child in self.children:
            await child.call({"cmd": "level", "level": level})

    async def reload(self) -> SidecarConfig:
        new = load_sidecar_config(self.config_path)  # raises SidecarConfigError: nothing changes
        fixed = ("inbound_port", "outbound_port", "bind", "admin_address", "admin_port", "workers")
        changed = [f for f in fixed if getattr(new, f) != getattr(self.config, f)]
        if changed:
            log.warning(
                "reload: %s change only with a hot restart; kept as before", ", ".join(changed)
            )
            new = SidecarConfig(**{**new.__dict__, **{f: getattr(self.config, f) for f in fixed}})
        self.config = new
        logs.set_level(new.log_level)
        if self.worker is not None:
            self.worker.reload(new)
        for child in self.children:
            await child.call({"cmd": "reload", "config": new.to_document()})
        log.info("reloaded config %s", new.digest)
        return new

    # -- life cycle ------------------------------------------------------------------------

    def prepare(self) -> tuple[list[tuple[str, socket.socket]], socket.socket, Gate]:
        """Before the event loop: sockets (own or taken over), the gate, forked workers."""
        if self.hot_restart:
            self.taken = take_over(self.config.state_dir)
            listeners, admin_sock = self.taken.listeners, self.taken.admin
            self.base = stats.without_gauges(self.taken.stats)
            log.info("took over %d listeners from pid %d", len(listeners), self.taken.old_pid)
        else:
            listeners, admin_sock = open_listeners(self.config), open_admin(self.config)
        gate = Gate(shared=self.config.workers > 1)
        if self.config.workers > 1:
            self.children = fork_workers(self.config, listeners, gate, admin_sock)
        return listeners, admin_sock, gate

    async def run(
        self, listeners: list[tuple[str, socket.socket]], admin_sock: socket.socket, gate: Gate
    ) -> int:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._reload_logged()))
        if not self.children:
            self.worker = Worker(self.config, listeners, gate)
            await self.worker.startup()
        else:
            for child in self.children:
                await child.connect()
        admin = Admin(self)
        await admin.start(admin_sock)
        if self.taken is not None:
            self._final = loop.create_task(self._collect_final_stats(self.taken))
        if self.config.state_dir:
            self.handover = HandOver(self.config.state_dir)
            loop.add_reader(
                self.handover.sock.fileno(), self._on_takeover, listeners, admin_sock, admin
            )
        self._ready = True
        # Everything allocated so far lives as long as the process: keep the collector off it.
        gc.collect()
        gc.freeze()
        log.info(
            "ready: inbound %d, outbound %d, admin %s:%d, %d worker(s), pid %d",
            self.config.inbound_port,
            self.config.outbound_port,
            self.config.admin_address,
            self.config.admin_port,
            max(1, len(self.children)),
            os.getpid(),
        )
        await self._stop.wait()
        await self._shutdown(admin)
        return 0

    def _on_stop(self) -> None:
        assert self._stop is not None
        if self._stop.is_set():
            self._force = True  # a second signal: stop waiting for in-flight requests
            if self.worker is not None:
                self.worker.close_now()
            return
        self._stop.set()

    def _on_takeover(
        self, listeners: list[tuple[str, socket.socket]], admin_sock: socket.socket, admin: Admin
    ) -> None:
        assert self.handover is not None and self._stop is not None
        if self.handover.accept(listeners, admin_sock, self._counters_now):
            log.info("handed the listeners over to a new sidecar; draining")
            self.handed_over = True
            asyncio.get_running_loop().remove_reader(self.handover.sock.fileno())
            admin.close()
            self._stop.set()

    def _counters_now(self) -> list[dict[str, Any]]:
        live = [self.worker.stats.snapshot()] if self.worker is not None else []
        return stats.without_gauges(stats.merge([self.base, *live]))

    async def _shutdown(self, admin: Admin) -> None:
        self._draining = True
        timeout = 0.0 if self._force else self.config.timeouts.drain
        log.info("draining (up to %.1fs)", timeout)
        if self.worker is not None:
            await self.worker.drain(timeout)
        for child in self.children:
            await child.drain(timeout)
        final = stats.without_gauges(stats.merge([self.base, *await self._live_ports()]))
        if self.handover is not None:
            self.handover.send_final(final)
            self.handover.close()
        admin.close()
        log.info("stopped")

    async def _live_ports(self) -> list[list[dict[str, Any]]]:
        if self.worker is not None:
            return [self.worker.stats.snapshot()]
        replies = [await child.call({"cmd": "stats"}) for child in self.children if child.alive]
        return [r["ports"] for r in replies if r]

    async def _collect_final_stats(self, taken: TakenOver) -> None:
        final = await asyncio.to_thread(
            read_final_stats, taken.channel, self.config.timeouts.drain + 30
        )
        if final is not None:
            self.base = final
            log.info("counters of pid %d carried over", taken.old_pid)

    async def _reload_logged(self) -> None:
        from sidecar.errors import SidecarConfigError  # noqa: PLC0415

        try:
            await self.reload()
        except SidecarConfigError as exc:
            log.error("reload refused, config kept: %s", exc)


def run(config_path: str | Path, *, hot_restart: bool = False) -> int:
    import uvloop  # noqa: PLC0415  (only the sidecar process needs it)

    config = load_sidecar_config(config_path)
    logs.setup(config.log_level)
    sidecar = Sidecar(config_path, config, hot_restart=hot_restart)
    listeners, admin_sock, gate = sidecar.prepare()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        code = runner.run(sidecar.run(listeners, admin_sock, gate))
    for child in sidecar.children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child.pid, 0)
    return code
