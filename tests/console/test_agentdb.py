"""console/agentdb.py without a server: batches commit together, answer after their commit,
and one failing job does not fail the others."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from console.agentdb import AgentDB, Db, Sql
from console.db import make_engine
from console.errors import NotFound

pytestmark = pytest.mark.unit


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)"))
    yield engine
    engine.dispose()


INSERT = Sql("INSERT INTO t (k, v) VALUES (:k, 'x')")


def insert(k: int, then_refuse: bool = False) -> object:
    def work(db: Db) -> int:
        db.execute(INSERT, {"k": k})
        if then_refuse:
            # A refusal after a write the job keeps (as agent jobs keep their nonce).
            raise NotFound("refused", ["body", "k"])
        return k

    return work


def rows(engine: Engine) -> list[int]:
    with engine.connect() as connection:
        return list(connection.execute(text("SELECT k FROM t ORDER BY k")).scalars())


async def in_one_batch(db: AgentDB, works: list[object]) -> list[object]:
    """Runs `works` as one batch: the worker is held by a first job until all are queued."""
    entered, hold = threading.Event(), threading.Event()

    def first(_db: Db) -> None:
        entered.set()
        hold.wait(10)

    blocker = asyncio.ensure_future(db.run(first))
    assert await asyncio.to_thread(entered.wait, 10)
    tasks = [asyncio.ensure_future(db.run(w)) for w in works]  # type: ignore[arg-type]
    await asyncio.sleep(0)
    hold.set()
    await blocker
    return await asyncio.gather(*tasks, return_exceptions=True)


def test_a_batch_commits_once_and_answers_after(engine: Engine) -> None:
    async def main() -> None:
        db = AgentDB(engine)
        db.start(asyncio.get_running_loop())
        try:
            results = await in_one_batch(db, [insert(1), insert(2), insert(3)])
            assert results == [1, 2, 3]
            # Answered only once committed: another connection sees every row.
            assert rows(engine) == [1, 2, 3]
            assert db.batches == 2  # the holding job, then the three together
        finally:
            db.stop()

    asyncio.run(main())


def test_a_refusal_keeps_the_others_and_its_own_earlier_writes(engine: Engine) -> None:
    async def main() -> None:
        db = AgentDB(engine)
        db.start(asyncio.get_running_loop())
        try:
            results = await in_one_batch(db, [insert(1), insert(2, then_refuse=True), insert(3)])
            assert results[0] == 1 and results[2] == 3
            assert isinstance(results[1], NotFound)
            assert rows(engine) == [1, 2, 3]
        finally:
            db.stop()

    asyncio.run(main())


def test_a_database_error_fails_only_its_own_job(engine: Engine) -> None:
    async def main() -> None:
        db = AgentDB(engine)
        db.start(asyncio.get_running_loop())
        try:
            await db.run(insert(5))
            # The duplicate key ends the batch's transaction; each job then runs alone, and
            # the error reaches its request as SQLAlchemy's (rendered 409 by the API).
            results = await in_one_batch(db, [insert(1), insert(5), insert(3)])
            assert results[0] == 1 and results[2] == 3
            assert isinstance(results[1], IntegrityError)
            assert rows(engine) == [1, 3, 5]
        finally:
            db.stop()

    asyncio.run(main())
