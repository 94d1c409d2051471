"""The agents' database work: one connection per worker thread, group commit.

Agent requests (register, status, metrics, config polls) are many, small and alike. Each
runs its whole database part as one job on a worker thread that owns a connection, so a
request crosses into a thread once (not once per FastAPI dependency) and never waits for a
pooled connection. Jobs that arrive while a batch runs form the next batch, which commits
once: under load one commit serves many requests, and a request is answered only after the
commit that holds its writes (an answer of 204 means the data is stored).

A job's contract: it raises `ConsoleError` (a refusal: 401, 404, 422) only before its own
writes, except for the nonce it records first (a refused request still used its nonce, as
before). Any other error rolls the batch back; its jobs then run again one by one, each in
its own transaction, so one bad job cannot fail the others.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from console.errors import ConsoleError

T = TypeVar("T")
Work = Callable[[Connection], Any]

# A batch is capped so one commit never holds SQLite's write lock for long.
MAX_BATCH = 256

log = logging.getLogger("sofamesh.console")


@dataclass
class _Job:
    work: Work
    future: asyncio.Future[Any]


_STOP = object()


class AgentDB:
    """`await run(work)` runs `work(connection)` in the next batch and returns its result
    (or raises its error) after that batch committed."""

    def __init__(self, engine: Engine, workers: int = 1) -> None:
        self._engine = engine
        self._workers = workers
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0
        self.jobs = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for i in range(self._workers):
            thread = threading.Thread(target=self._serve, name=f"agentdb-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join(10)
        self._threads.clear()

    async def run(self, work: Callable[[Connection], T]) -> T:
        if not self._threads:
            raise RuntimeError("AgentDB is not started")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put(_Job(work, future))
        return await future

    # --- worker thread -------------------------------------------------------------------

    def _serve(self) -> None:
        connection: Connection | None = None
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                assert isinstance(first, _Job)
                batch = [first]
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP:
                        stop = True
                        break
                    assert isinstance(more, _Job)
                    batch.append(more)
                connection = self._execute(connection, batch)
                if stop:
                    return
        finally:
            if connection is not None:
                connection.close()

    def _execute(self, connection: Connection | None, batch: list[_Job]) -> Connection | None:
        self.batches += 1
        self.jobs += len(batch)
        try:
            connection = connection or self._engine.connect()
            outcomes = self._transaction(connection, batch)
        except SQLAlchemyError:
            # A fresh connection: the old one may be broken (a restarted PostgreSQL).
            connection = self._reset(connection)
            outcomes = [self._alone(connection, job) for job in batch]
        except Exception as exc:
            log.exception("agent database batch failed")
            outcomes = [(False, exc)] * len(batch)
        for job, outcome in zip(batch, outcomes, strict=True):
            self._settle(job, outcome)
        return connection

    def _transaction(self, connection: Connection, batch: list[_Job]) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        with connection.begin():
            for job in batch:
                try:
                    outcomes.append((True, job.work(connection)))
                except ConsoleError as exc:
                    outcomes.append((False, exc))
        return outcomes

    def _alone(self, connection: Connection | None, job: _Job) -> tuple[bool, Any]:
        try:
            connection = connection or self._engine.connect()
            return self._transaction(connection, [job])[0]
        except Exception as exc:
            return False, exc

    def _reset(self, connection: Connection | None) -> Connection | None:
        if connection is not None:
            try:
                connection.invalidate()
                connection.close()
            except SQLAlchemyError:
                pass
        try:
            return self._engine.connect()
        except SQLAlchemyError:
            return None

    def _settle(self, job: _Job, outcome: tuple[bool, Any]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(_resolve, job.future, outcome)


def _resolve(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():  # the request was cancelled (its client went away)
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
