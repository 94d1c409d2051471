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

    def commit(self, db: Session, changed_nodes: list[int] | None = None) -> None:
        """Commit; when nodes' config changed, NOTIFY replicas (in the same transaction)
        and wake local long-polls (after the commit, so they read the new data)."""
        if changed_nodes:
            send_notify(db.connection(), changed_nodes)
        db.commit()
        if changed_nodes:
            self.notifier.publish(changed_nodes)


def console_state(request: Request) -> ConsoleState:
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
