"""Database engines (SQLite by default, PostgreSQL by URL) and Alembic migrations."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from console.errors import ConsoleError

MIGRATIONS = Path(__file__).with_name("migrations")


def default_url(root: str | None = None) -> str:
    """`sqlite:///<root>/var/lib/sofamesh/console.db` (root from --root or SOFAMESH_ROOT)."""
    base = Path(root or os.environ.get("SOFAMESH_ROOT") or "/")
    return f"sqlite:///{base / 'var/lib/sofamesh/console.db'}"


def normalize_url(url: str) -> str:
    """Accept `postgresql://` and `postgres://` as psycopg 3 URLs; reject other drivers."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConsoleError(
            f"--db: {url.split('://', maxsplit=1)[0]!r}... is not a database URL"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return url
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise ConsoleError(f"--db: unsupported database {backend!r} (sqlite or postgresql)")


def make_engine(url: str) -> Engine:
    """An engine with the per-dialect settings the console relies on."""
    url = normalize_url(url)
    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        _prepare_sqlite_file(url)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        # As many connections as anyio's 40 worker threads can ask for at once, most kept:
        # a connection opened past `pool_size` is closed on return, and each one is a new
        # PostgreSQL backend process. The agents' requests use their own (console/agentdb.py).
        kwargs.update(pool_size=20, max_overflow=20, pool_pre_ping=True)
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def _prepare_sqlite_file(url: str) -> None:
    database = make_url(url).database
    if not database or database == ":memory:":
        return
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        # The file holds access-key secrets and password hashes: owner only.
        path.touch(mode=0o600)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
