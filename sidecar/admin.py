"""The admin API on loopback (R-SC-4): health, readiness, stats, metrics, config, log level,
reload. A deliberately small HTTP/1.1 server: one request per connection, JSON or text."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from sidecar import logs, stats
from sidecar.config import SidecarConfig, parse_level
from sidecar.errors import SidecarConfigError

log = logging.getLogger("sofamesh.sidecar")


class Control(Protocol):
    """What the admin API needs from the running sidecar."""

    config: SidecarConfig

    def ready(self) -> bool: ...

    def draining(self) -> bool: ...

    async def stats(self) -> dict[str, Any]: ...

    async def set_level(self, level: str) -> None: ...

    async def reload(self) -> SidecarConfig: ...


class Admin:
    def __init__(self, control: Control) -> None:
        self.control = control
        self.server: asyncio.Server | None = None

    async def start(self, sock: socket.socket) -> None:
        self.server = await asyncio.start_server(self._handle, sock=sock)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            method, target = head.split(b" ", 2)[:2]
            status, ctype, body = await self._route(method.decode(), target.decode())
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            status, ctype, body = 400, "text/plain", b"bad request\n"
        writer.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, _REASONS.get(status, b"OK"), ctype.encode(), len(body))
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def _route(self, method: str, target: str) -> tuple[int, str, bytes]:
        url = urlsplit(target)
        path, query = url.path, parse_qs(url.query)
        c = self.control
        match method, path:
            case "GET", "/healthz":
                return 200, "text/plain", b"ok\n"
            case "GET", "/ready":
                if c.ready():
                    return 200, "text/plain", b"ready\n"
                return 503, "text/plain", b"draining\n" if c.draining() else b"starting\n"
            case "GET", "/stats":
                return _json(200, await c.stats())
            case "GET", "/metrics":
                doc = await c.stats()
                text = stats.prometheus(doc["ports"], workers=doc["workers"], ready=doc["ready"])
                return 200, "text/plain; version=0.0.4", text.encode()
            case "GET", "/config":
                return _json(200, {"config": c.config.to_document(), "digest": c.config.digest})
            case "GET", "/logging":
                return _json(200, {"level": logs.current_level()})
            case "POST" | "PUT", "/logging":
                try:
                    level = parse_level(query.get("level", [""])[0], "level")
                except SidecarConfigError as exc:
                    return _json(400, {"error": str(exc)})
                await c.set_level(level)
                log.warning("log level set to %s through the admin API", level)
                return _json(200, {"level": level})
            case "POST", "/reload":
                try:
                    config = await c.reload()
                except SidecarConfigError as exc:
                    return _json(400, {"error": str(exc)})
                return _json(200, {"digest": config.digest})
        return 404, "text/plain", b"not found\n"


def _json(status: int, doc: Any) -> tuple[int, str, bytes]:
    return status, "application/json", (json.dumps(doc, sort_keys=True) + "\n").encode()


_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 503: b"Service Unavailable"}
