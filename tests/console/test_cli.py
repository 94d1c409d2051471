"""`sofamesh console migrate` and `admin ...` (in-process through click), and the schema
the migrations build matching the models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from click.testing import CliRunner

from agent.cli import main
from agent.exit_codes import ExitStatus
from console.db import make_engine, migrate
from console.models import Base
from tests.console.conftest import PgCluster

pytestmark = pytest.mark.unit


def run(db: str, *args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["console", *args, "--db", db], input=stdin)
    return result.exit_code, result.output


def test_admin_commands(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'c.db'}"
    assert run(db, "migrate") == (0, "database schema is up to date\n")
    assert run(db, "migrate")[0] == 0  # idempotent
    assert oct((tmp_path / "c.db").stat().st_mode & 0o777) == "0o600"
    assert (
        run(db, "admin", "create-user", "alice", "--password-stdin", stdin="long enough pw\n")[0]
        == 0
    )
    code, out = run(
        db, "admin", "create-user", "alice", "--password-stdin", stdin="long enough pw\n"
    )
    assert code == ExitStatus.BAD_INPUT
    assert "exists" in out
    code, out = run(db, "admin", "create-user", "bob", "--password-stdin", stdin="short\n")
    assert code == ExitStatus.BAD_INPUT
    assert "password" in out
    assert run(db, "admin", "create-user", "bad name", "--password-stdin", stdin="x" * 9)[0] == 2
    assert run(db, "admin", "create-tenant", "t1")[0] == 0
    assert run(db, "admin", "create-workspace", "t1", "w1")[0] == 0
    assert run(db, "admin", "create-workspace", "nope", "w1")[0] == 2
    assert run(db, "admin", "create-instance", "t1", "w1", "i-1")[0] == 0
    assert run(db, "admin", "create-instance", "t1", "w1", "i 1")[0] == 2

    code, out = run(db, "admin", "create-key", "alice", "t1", "w1", "i-1", "--json")
    assert code == 0
    first = json.loads(out)
    assert set(first) == {"key_id", "secret", "tenant", "workspace", "instance_id"}
    code, out = run(db, "admin", "create-key", "alice", "t1", "w1", "i-1")
    assert code == 0
    assert out.startswith("key id: SMAK")
    assert "secret: " in out
    second_id = out.split()[2]
    code, out = run(db, "admin", "create-key", "alice", "t1", "w1", "i-1")
    assert code == 2
    assert "2 keys" in out

    code, out = run(db, "admin", "list-keys", "--json")
    listed = json.loads(out)
    assert [k["key_id"] for k in listed] == [first["key_id"], second_id]
    assert first["secret"] not in out
    assert run(db, "admin", "list-keys", "--user", "nobody")[0] == 2
    assert run(db, "admin", "delete-key", first["key_id"]) == (
        0,
        f"key {first['key_id']} deleted\n",
    )
    assert run(db, "admin", "delete-key", first["key_id"])[0] == 2
    code, out = run(db, "admin", "list-keys")
    assert first["key_id"] not in out
    assert second_id in out


def test_bad_db_url_is_one_line(tmp_path: Path) -> None:
    code, out = run("mysql://x/y", "migrate")
    assert code == 2
    assert "unsupported database" in out


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_migrations_build_exactly_the_models(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path / 'm.db'}"
    else:
        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        url = cluster.create_database(f"parity_{tmp_path.name[-8:].replace('-', '_')}".lower())
    engine = make_engine(url)
    try:
        migrate(engine)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()
