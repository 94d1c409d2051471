"""Alembic environment: runs on the connection console.db.migrate() hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from console.models import Base


def run() -> None:
    connection: Connection | None = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through `sofamesh console migrate`")
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite alters tables by copying them; batch mode does that for later revisions.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run()
