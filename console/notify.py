"""Wake long-polling agents when their node's config changes.

In one process, writers call `Notifier.publish(node_ids)` after commit (from any thread);
waiters `subscribe` before they read the node's version, so no change slips between the read
and the wait. With PostgreSQL every write also sends `NOTIFY sofamesh_config, '<ids>'` in its
transaction, and each replica LISTENs on its own connection: a change made through one
replica wakes agents waiting on another (delivered at commit, so never before the data).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable

import psycopg
from sqlalchemy import Connection, Engine, text

CHANNEL = "sofamesh_config"
# NOTIFY payloads are limited to 8000 bytes; ids are sent in chunks well under that.
PAYLOAD_LIMIT = 7000
ALL = "*"

log = logging.getLogger("sofamesh.console")


class Notifier:
    def __init__(self) -> None:
        self._waiters: dict[int, set[asyncio.Event]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # Wake-ups delivered so far (on the loop): a waiter that learns its node only from
        # a read compares it before and after, so a change during the read is not lost.
        self.published = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @contextlib.asynccontextmanager
    async def subscribe(self, node_id: int) -> AsyncIterator[asyncio.Event]:
        event = asyncio.Event()
        self._waiters.setdefault(node_id, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(node_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[node_id]

    def publish(self, node_ids: Iterable[int] | None) -> None:
        """Wake waiters of these nodes (None: all). Safe to call from any thread."""
        ids = None if node_ids is None else list(node_ids)
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake(ids)
        else:
            loop.call_soon_threadsafe(self._wake, ids)

    def _wake(self, ids: list[int] | None) -> None:
        self.published += 1
        targets = list(self._waiters) if ids is None else ids
        for node_id in targets:
            for event in self._waiters.get(node_id, ()):
                event.set()

    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())


def send_notify(connection: Connection, node_ids: Iterable[int]) -> None:
    """Queue NOTIFY in the caller's transaction (PostgreSQL only; a no-op elsewhere)."""
    if connection.dialect.name != "postgresql":
        return
    chunk: list[str] = []
    size = 0
    for node_id in node_ids:
        item = str(node_id)
        if size + len(item) + 1 > PAYLOAD_LIMIT:
            _notify(connection, chunk)
            chunk, size = [], 0
        chunk.append(item)
        size += len(item) + 1
    if chunk:
        _notify(connection, chunk)


def _notify(connection: Connection, ids: list[str]) -> None:
    connection.execute(
        text("SELECT pg_notify(:channel, :payload)"),
        {"channel": CHANNEL, "payload": ",".join(ids)},
    )


async def listen(engine: Engine, notifier: Notifier, ready: asyncio.Event) -> None:
    """LISTEN until cancelled; reconnects with backoff and then wakes everyone (a
    notification may have been missed while disconnected)."""
    url = engine.url.set(drivername="postgresql")
    dsn = url.render_as_string(hide_password=False)
    delay = 0.5
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
            async with conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                notifier.publish(None)
                ready.set()
                delay = 0.5
                async for message in conn.notifies():
                    notifier.publish(_parse(message.payload))
        except asyncio.CancelledError:
            raise
        except (psycopg.Error, OSError) as exc:
            log.warning("config change listener disconnected (%s); retrying", type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


def _parse(payload: str) -> list[int] | None:
    if payload == ALL:
        return None
    ids: list[int] = []
    for part in payload.split(","):
        with contextlib.suppress(ValueError):
            ids.append(int(part))
    return ids
