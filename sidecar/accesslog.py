"""Optional access log: one line per request, rotated by size."""

from __future__ import annotations

import logging
import logging.handlers
import time
from typing import TYPE_CHECKING

from sidecar import config as cfg

if TYPE_CHECKING:
    from sidecar.proxy import Downstream, Request


class AccessLog:
    def __init__(self, settings: cfg.AccessLog) -> None:
        self._logger = logging.getLogger(f"sofamesh.sidecar.access.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._handler: logging.Handler | None = None
        self._settings: cfg.AccessLog | None = None
        self.reconfigure(settings)

    @property
    def enabled(self) -> bool:
        return self._handler is not None

    def reconfigure(self, settings: cfg.AccessLog) -> None:
        if settings == self._settings:
            return
        if self._handler is not None:
            self._logger.removeHandler(self._handler)
            self._handler.close()
            self._handler = None
        self._settings = settings
        if settings.path:
            handler = logging.handlers.RotatingFileHandler(
                settings.path, maxBytes=settings.max_bytes, backupCount=settings.backups
            )
            handler.setFormatter(logging.Formatter("%(message)s"))
            self._logger.addHandler(handler)
            self._handler = handler

    def request(self, conn: Downstream, request: Request) -> None:
        elapsed_ms = (time.monotonic() - request.start) * 1000
        self._logger.info(
            "%s %s %s:%d %s %d %.3fms",
            time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            conn.direction,
            conn.dst[0],
            conn.dst[1],
            request.method.decode("latin-1"),
            request.status,
            elapsed_ms,
        )
