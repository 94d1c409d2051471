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
import contextlib
import logging
import queue
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from console.errors import ConsoleError
from console.models import UTCDateTime

T = TypeVar("T")
Work = Callable[["Db"], Any]

# A batch is capped so one commit never holds SQLite's write lock for long.
MAX_BATCH = 256

log = logging.getLogger("sofamesh.console")


@dataclass
class _Job:
    work: Work
    future: asyncio.Future[Any]


_STOP = object()


class Sql:
    """A statement the agents' jobs run on the DB-API cursor itself: written once with
    `:name` parameters in SQL that SQLite and PostgreSQL both accept. SQLAlchemy's own
    execution (parameter processing, cache keys, result objects) cost more Python than the
    statements; `datetimes` names the parameters stored as the ORM stores them."""

    def __init__(self, sql: str, *datetimes: str) -> None:
        self.sql = sql
        self.datetimes = datetimes
        self._compiled: dict[str, str] = {}

    def text_for(self, paramstyle: str) -> str:
        text = self._compiled.get(paramstyle)
        if text is None:
            text = self.sql if paramstyle == "named" else _PARAM.sub(r"%(\1)s", self.sql)
            self._compiled[paramstyle] = text
        return text


_PARAM = re.compile(r"(?<!:):(\w+)")


class Db:
    """What a job gets: its batch's DB-API connection (one transaction per batch)."""

    def __init__(self, raw: Any, dialect: Dialect) -> None:
        self.raw = raw
        self.dialect = dialect
        self.dialect_name = dialect.name
        self._paramstyle = "named" if dialect.name == "sqlite" else "pyformat"
        self._datetime = UTCDateTime().bind_processor(dialect)

    def execute(self, stmt: Sql, params: dict[str, Any]) -> Any:
        cursor = self.raw.cursor()
        cursor.execute(stmt.text_for(self._paramstyle), self._adapt(stmt, params))
        return cursor

    def executemany(self, stmt: Sql, rows: list[dict[str, Any]]) -> None:
        cursor = self.raw.cursor()
        cursor.executemany(stmt.text_for(self._paramstyle), [self._adapt(stmt, r) for r in rows])
        cursor.close()

    def _adapt(self, stmt: Sql, params: dict[str, Any]) -> dict[str, Any]:
        if stmt.datetimes and self._datetime is not None:
            params = dict(params)
            for name in stmt.datetimes:
                params[name] = self._datetime(params[name])
        return params


class AgentDB:
    """`await run(work)` runs `work(db)` in the next batch and returns its result
    (or raises its error) after that batch committed."""

    def __init__(self, engine: Engine, workers: int = 1) -> None:
        self._engine = engine
        self._workers = workers
        self._queue: queue.SimpleQueue[list[_Job] | object] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # Jobs of the current loop iteration, handed to the workers together: one thread
        # wake-up for all of them, not one each.
        self._pending: list[_Job] = []
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

    async def run(self, work: Callable[[Db], T]) -> T:
        loop = self._loop
        if loop is None or not self._threads:
            raise RuntimeError("AgentDB is not started")
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append(_Job(work, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        jobs, self._pending = self._pending, []
        self._queue.put(jobs)

    # --- worker thread -------------------------------------------------------------------

    def _serve(self) -> None:
        db: Db | None = None
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                assert isinstance(first, list)
                batch: list[_Job] = first
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP:
                        stop = True
                        break
                    assert isinstance(more, list)
                    batch += more
                for start in range(0, len(batch), MAX_BATCH):
                    db = self._execute(db, batch[start : start + MAX_BATCH])
                if stop:
                    return
        finally:
            if db is not None:
                db.raw.close()

    def _connect(self) -> Db:
        return Db(self._engine.raw_connection(), self._engine.dialect)

    def _execute(self, db: Db | None, batch: list[_Job]) -> Db | None:
        self.batches += 1
        self.jobs += len(batch)
        dbapi_error = self._engine.dialect.loaded_dbapi.Error
        try:
            db = db or self._connect()
            outcomes = self._transaction(db, batch)
        except (dbapi_error, SQLAlchemyError):
            # A fresh connection: the old one may be broken (a restarted PostgreSQL).
            db = self._reset(db)
            outcomes = [self._alone(db, job) for job in batch]
        except Exception as exc:  # a bug in a job: its requests answer 500
            log.exception("agent database batch failed")
            self._rollback(db)
            outcomes = [(False, exc)] * len(batch)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # One wake-up of the event loop for the whole batch.
            loop.call_soon_threadsafe(_resolve, [job.future for job in batch], outcomes)
        return db

    def _transaction(self, db: Db, batch: list[_Job]) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        try:
            for job in batch:
                try:
                    outcomes.append((True, job.work(db)))
                except ConsoleError as exc:
                    outcomes.append((False, exc))
            db.raw.commit()
        except BaseException:
            self._rollback(db)
            raise
        return outcomes

    def _alone(self, db: Db | None, job: _Job) -> tuple[bool, Any]:
        dbapi_error = self._engine.dialect.loaded_dbapi.Error
        try:
            db = db or self._connect()
            return self._transaction(db, [job])[0]
        except dbapi_error as exc:
            # As SQLAlchemy raises it, so the API's handlers render it (409, 422, 500).
            return False, DBAPIError.instance(None, None, exc, dbapi_error)
        except Exception as exc:  # handed to the request, which renders it
            return False, exc

    def _rollback(self, db: Db | None) -> None:
        if db is None:
            return
        with contextlib.suppress(Exception):
            db.raw.rollback()

    def _reset(self, db: Db | None) -> Db | None:
        if db is not None:
            with contextlib.suppress(Exception):
                db.raw.invalidate()
            with contextlib.suppress(Exception):
                db.raw.close()
        try:
            return self._connect()
        except SQLAlchemyError:
            return None


def _resolve(futures: list[asyncio.Future[Any]], outcomes: list[tuple[bool, Any]]) -> None:
    for future, (ok, value) in zip(futures, outcomes, strict=True):
        if future.done():  # the request was cancelled (its client went away)
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
