"""Worker processes (workers > 1): forked before the event loop starts, controlled over a
socketpair with one JSON line per request and per answer."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import os
import signal
import socket
from typing import Any

from sidecar import logs
from sidecar.config import SidecarConfig
from sidecar.governance import Gate
from sidecar.worker import Worker

PR_SET_PDEATHSIG = 1


class Child:
    """The master's handle on one worker process."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.alive = True
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock: asyncio.Lock | None = None

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(sock=self.sock)
        self._lock = asyncio.Lock()

    async def call(self, message: dict[str, Any]) -> dict[str, Any] | None:
        if not self.alive or self._reader is None or self._writer is None or self._lock is None:
            return None
        async with self._lock:
            try:
                self._writer.write(json.dumps(message).encode() + b"\n")
                await self._writer.drain()
                line = await asyncio.wait_for(self._reader.readline(), timeout=10)
            except (ConnectionError, TimeoutError):
                line = b""
            if not line:
                self.alive = False
                return None
            reply: dict[str, Any] = json.loads(line)
            return reply

    async def drain(self, timeout: float) -> None:
        await self.call({"cmd": "drain", "timeout": timeout})
        self.alive = False


def fork_workers(
    config: SidecarConfig,
    listeners: list[tuple[str, socket.socket]],
    gate: Gate,
    admin_sock: socket.socket,
) -> list[Child]:
    children: list[Child] = []
    for _ in range(config.workers):
        parent_end, child_end = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the worker
            parent_end.close()
            admin_sock.close()
            for other in children:
                other.sock.close()
            code = 1
            try:
                code = _worker_main(config, listeners, gate, child_end)
            finally:
                os._exit(code)
        child_end.close()
        children.append(Child(pid, parent_end))
    return children


def _worker_main(
    config: SidecarConfig,
    listeners: list[tuple[str, socket.socket]],
    gate: Gate,
    control: socket.socket,
) -> int:
    import uvloop  # noqa: PLC0415

    # If the master dies, so do we (the agent restarts the whole sidecar).
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    # Reload is the master's job (it relays the new config); a group-wide SIGHUP must not
    # kill a worker by its default action.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logs.setup(config.log_level)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve(config, listeners, gate, control))


async def _serve(
    config: SidecarConfig,
    listeners: list[tuple[str, socket.socket]],
    gate: Gate,
    control: socket.socket,
) -> int:
    worker = Worker(config, listeners, gate)
    await worker.startup()
    gc.collect()
    gc.freeze()  # what exists now lives as long as the worker
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # The master coordinates drain; a signal sent to the whole group drains us too.
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    reader, writer = await asyncio.open_connection(sock=control)
    drain_timeout = config.timeouts.drain
    reading = loop.create_task(reader.readline())
    stopping = loop.create_task(stop.wait())
    while True:
        done, _ = await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stopping in done:
            break
        line = reading.result()
        if not line:
            break  # the master is gone
        message = json.loads(line)
        cmd = message.get("cmd")
        if cmd == "stats":
            reply: dict[str, Any] = {"ports": worker.stats.snapshot()}
        elif cmd == "reload":
            worker.reload(SidecarConfig.parse(message["config"]))
            logs.set_level(worker.config.log_level)
            reply = {"ok": True}
        elif cmd == "level":
            logs.set_level(message["level"])
            reply = {"ok": True}
        elif cmd == "drain":
            drain_timeout = float(message.get("timeout", drain_timeout))
            await worker.drain(drain_timeout)
            writer.write(b'{"ok": true}\n')
            await writer.drain()
            return 0
        else:
            reply = {"error": f"unknown command {cmd!r}"}
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()
        reading = loop.create_task(reader.readline())
    await worker.drain(drain_timeout)
    return 0
