"""What every request handler shares: the engine, sessions, the notifier; and the
dependencies that hand a database session to a handler."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from console.agentdb import AgentDB
from console.keycache import KeyCache
from console.notify import Notifier, send_notify

# A node that has not been heard from for this long is offline and its sidecar Unknown.
OFFLINE_AFTER = 60


@dataclass
class ConsoleState:
    engine: Engine
    sessions: sessionmaker[Session]
    notifier: Notifier = field(default_factory=Notifier)
    # Sessions last 12 hours; the UI logs in again after that.
    session_ttl: int = 12 * 3600
    # The agents' requests: their own connection(s) and group commit (console/agentdb.py).
    agentdb: AgentDB = field(init=False)
    # Access keys by id (console/auth.py: KeyCache); node config documents by node id.
    keys: KeyCache = field(default_factory=KeyCache)
    documents: dict[int, tuple[int, str | None, bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # PostgreSQL answers each statement over a socket: a second worker overlaps those
        # round trips. More (4 measured) made smaller batches, more commits and more GIL
        # hand-offs: more CPU in both processes for no better latency. SQLite has one
        # writer anyway.
        workers = 2 if self.engine.dialect.name == "postgresql" else 1
        self.agentdb = AgentDB(self.engine, workers)

    def commit(self, db: Session, changed_nodes: list[int] | None = None) -> None:
        """Commit; when nodes' config changed, NOTIFY replicas (in the same transaction)
        and wake local long-polls (after the commit, so they read the new data)."""
        if changed_nodes:
            send_notify(db.connection(), changed_nodes)
        db.commit()
        if changed_nodes:
            self.notifier.publish(changed_nodes)


async def console_state(request: Request) -> ConsoleState:
    # async: FastAPI would run a plain function in the thread pool (a hop per request).
    state: ConsoleState = request.app.state.console
    return state


StateDep = Annotated[ConsoleState, Depends(console_state)]


def database(state: StateDep) -> Iterator[Session]:
    with state.sessions() as db:
        yield db


DbDep = Annotated[Session, Depends(database)]


def now() -> datetime:
    return datetime.now(UTC)


def unix_now() -> int:
    return int(time.time())
