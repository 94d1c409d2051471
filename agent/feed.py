"""Follow the console's config for this node (R-AG-6, R-AG-7).

A thread long-polls GET /api/v1/agent/config; every new version is validated, cached on
disk (atomically) and handed to the loop, which wakes at once. While the console is away
the cached config stands, and the feed retries with jittered exponential backoff.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from agent.console_client import (
    ConsoleAuthError,
    ConsoleClient,
    ConsoleClientError,
    ConsoleRejected,
    NodeConfig,
)
from agent.paths import Paths, read_json, write_json_atomic

log = logging.getLogger("sofamesh.agent.feed")
LONG_POLL = 30
RETRY_BASE = 1.0
RETRY_CAP = 30.0


def config_document(config: NodeConfig) -> dict[str, Any]:
    doc = asdict(config)
    doc["limits"] = {str(port): limit for port, limit in config.limits.items()}
    return doc


class ConfigFeed:
    def __init__(
        self,
        client: ConsoleClient,
        *,
        paths: Paths,
        app: str,
        ip: str,
        wake: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        self.client, self.paths, self.app, self.ip = client, paths, app, ip
        self._wake, self._stop = wake, stop
        self._lock = threading.Lock()
        self._doc: dict[str, Any] | None = read_json(paths.config_cache)
        self.source = "cache" if self._doc is not None else "none"
        self.reachable = False
        self.error: str | None = None
        self._rng = random.Random()  # noqa: S311  (jitter)
        self.thread = threading.Thread(target=self._run, name="config-feed", daemon=True)

    @property
    def document(self) -> dict[str, Any] | None:
        with self._lock:
            return self._doc

    @property
    def version(self) -> int:
        doc = self.document
        return int(doc["version"]) if doc else 0

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                # The first call after a start answers at once (version 0 never matches);
                # later ones wait until the console has something newer.
                wait = LONG_POLL if self.source == "console" else 0
                config = self.client.config(self.app, self.ip, self.version, wait=wait)
            except (ConsoleAuthError, ConsoleRejected, ConsoleClientError) as exc:
                failures += 1
                self.reachable, self.error = False, str(exc)
                delay = self._rng.uniform(0, min(RETRY_CAP, RETRY_BASE * 2**failures))
                log.warning("console: %s; keeping the last config, retry in %.1fs", exc, delay)
                self._wake()
                self._stop.wait(delay)
                continue
            failures = 0
            if not self.reachable:
                log.info("console reachable")
            self.reachable, self.error = True, None
            if config is None:
                continue
            doc = config_document(config)
            write_json_atomic(self.paths.config_cache, doc)
            with self._lock:
                self._doc, self.source = doc, "console"
            log.info("config version %d from the console", config.version)
            self._wake()
