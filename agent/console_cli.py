"""`sofamesh console ...`: serve the control plane and administer it.

The console's modules (FastAPI, SQLAlchemy) load only inside these commands, so the rest of
the CLI starts fast on nodes that never run a console.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click

from agent.cliutil import fail
from agent.exit_codes import ExitStatus

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

F = TypeVar("F", bound=Callable[..., Any])


def db_option(func: F) -> F:
    return click.option(
        "--db",
        "db_url",
        envvar="SOFAMESH_CONSOLE_DB",
        metavar="URL",
        help="sqlite:///PATH or postgresql://... "
        "(default: sqlite under <root>/var/lib/sofamesh/console.db; env SOFAMESH_CONSOLE_DB).",
    )(func)


def _url(ctx: click.Context, db_url: str | None) -> str:
    from console.db import default_url  # noqa: PLC0415

    root = (ctx.obj or {}).get("root") if ctx.obj else None
    return db_url or default_url(root)


@contextmanager
def _database(ctx: click.Context, db_url: str | None) -> Iterator[Session]:
    """A migrated database session; console errors become one line and exit code 2."""
    from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415

    from console.db import make_engine, migrate, sessions  # noqa: PLC0415
    from console.errors import ConsoleError  # noqa: PLC0415

    try:
        engine = make_engine(_url(ctx, db_url))
        try:
            migrate(engine)
            with sessions(engine)() as db:
                yield db
                db.commit()
        finally:
            engine.dispose()
    except ConsoleError as exc:
        fail(ExitStatus.BAD_INPUT, str(exc))
    except SQLAlchemyError as exc:
        fail(ExitStatus.ERROR, f"database: {type(exc).__name__}: {str(exc).splitlines()[0]}")


@click.group("console")
def console_group() -> None:
    """The control plane: HTTP API and database (see console/DESIGN.md)."""


@console_group.command("serve")
@db_option
@click.option(
    "--listen",
    default="127.0.0.1:8470",
    show_default=True,
    metavar="HOST:PORT",
    envvar="SOFAMESH_CONSOLE_LISTEN",
    help="Address of the HTTP API.",
)
@click.pass_context
def serve_command(ctx: click.Context, db_url: str | None, listen: str) -> None:
    """Apply migrations, then serve the API until SIGTERM or SIGINT."""
    from console.errors import ConsoleError  # noqa: PLC0415
    from console.server import configure_logging, serve  # noqa: PLC0415

    configure_logging()
    try:
        serve(_url(ctx, db_url), listen)
    except ConsoleError as exc:
        fail(ExitStatus.BAD_INPUT, str(exc))


@console_group.command("migrate")
@db_option
@click.pass_context
def migrate_command(ctx: click.Context, db_url: str | None) -> None:
    """Bring the database schema to the newest revision (idempotent)."""
    with _database(ctx, db_url):
        pass
    click.echo("database schema is up to date")


@console_group.group("admin")
def admin_group() -> None:
    """Users, tenants, workspaces, instance IDs and access keys."""


@admin_group.command("create-user")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@db_option
@click.pass_context
def create_user(ctx: click.Context, name: str, password_stdin: bool, db_url: str | None) -> None:
    """Create an operator who logs in to the console with NAME and a password."""
    from console import admin  # noqa: PLC0415

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    with _database(ctx, db_url) as db:
        admin.create_user(db, name, password)
    click.echo(f"user {name} created")


@admin_group.command("create-tenant")
@click.argument("name")
@db_option
@click.pass_context
def create_tenant(ctx: click.Context, name: str, db_url: str | None) -> None:
    """Create a tenant."""
    from console import admin  # noqa: PLC0415

    with _database(ctx, db_url) as db:
        admin.create_tenant(db, name)
    click.echo(f"tenant {name} created")


@admin_group.command("create-workspace")
@click.argument("tenant")
@click.argument("name")
@db_option
@click.pass_context
def create_workspace(ctx: click.Context, tenant: str, name: str, db_url: str | None) -> None:
    """Create a workspace in TENANT."""
    from console import admin  # noqa: PLC0415

    with _database(ctx, db_url) as db:
        admin.create_workspace(db, tenant, name)
    click.echo(f"workspace {tenant}/{name} created")


@admin_group.command("create-instance")
@click.argument("tenant")
@click.argument("workspace")
@click.argument("instance_id")
@db_option
@click.pass_context
def create_instance(
    ctx: click.Context, tenant: str, workspace: str, instance_id: str, db_url: str | None
) -> None:
    """Create an instance ID in TENANT/WORKSPACE."""
    from console import admin  # noqa: PLC0415

    with _database(ctx, db_url) as db:
        admin.create_instance(db, tenant, workspace, instance_id)
    click.echo(f"instance {tenant}/{workspace}/{instance_id} created")


@admin_group.command("create-key")
@click.argument("user")
@click.argument("tenant")
@click.argument("workspace")
@click.argument("instance_id")
@click.option("--json", "as_json", is_flag=True, help="Print {key_id, secret, ...} as JSON.")
@db_option
@click.pass_context
def create_key(
    ctx: click.Context,
    *,
    user: str,
    tenant: str,
    workspace: str,
    instance_id: str,
    as_json: bool,
    db_url: str | None,
) -> None:
    """Create an access key for USER in an instance; the secret is printed once, here."""
    from console import admin  # noqa: PLC0415

    with _database(ctx, db_url) as db:
        owner = admin.find_user(db, user)
        instance = admin.find_instance(db, tenant, workspace, instance_id)
        created = admin.create_key(db, owner, instance)
    if as_json:
        click.echo(json.dumps(created.__dict__, indent=2, sort_keys=True))
        return
    click.echo(f"key id: {created.key_id}")
    click.echo(f"secret: {created.secret}")
    click.echo("the secret is shown only now: store it where the install command can read it")


@admin_group.command("delete-key")
@click.argument("key_id")
@db_option
@click.pass_context
def delete_key(ctx: click.Context, key_id: str, db_url: str | None) -> None:
    """Delete an access key (for example a leaked one); its agents are refused at once."""
    from console import admin  # noqa: PLC0415

    with _database(ctx, db_url) as db:
        admin.delete_key(db, key_id)
    click.echo(f"key {key_id} deleted")


@admin_group.command("list-keys")
@click.option("--user", "user_name", help="Only this user's keys.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@db_option
@click.pass_context
def list_keys(ctx: click.Context, user_name: str | None, as_json: bool, db_url: str | None) -> None:
    """List access keys (never their secrets)."""
    from console import admin  # noqa: PLC0415

    with _database(ctx, db_url) as db:
        owner = admin.find_user(db, user_name) if user_name else None
        keys = admin.list_keys(db, owner)
    rows = [
        {
            "key_id": k.key_id,
            "user": k.user,
            "tenant": k.tenant,
            "workspace": k.workspace,
            "instance_id": k.instance_id,
            "created_at": k.created_at.isoformat(),
        }
        for k in keys
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    for row in rows:
        click.echo(
            f"{row['key_id']}  {row['user']}  {row['tenant']}/{row['workspace']}/"
            f"{row['instance_id']}  {row['created_at']}"
        )
