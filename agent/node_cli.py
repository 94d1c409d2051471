"""`sofamesh install | uninstall | reinstall | status | logs` and `sofamesh agent run|keep`
(R-CLI-1..7). Options are the seed product's, long and short."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

import click

from agent import install as installer
from agent import procs, settings
from agent.cliutil import echo_json, errors_to_exit, fail, require_root
from agent.exit_codes import ExitStatus
from agent.paths import Paths, read_json
from agent.settings import NodeSettings


def _paths(ctx: click.Context) -> Paths:
    return Paths.from_env(ctx.obj.get("root") if ctx.obj else None)


def _verbose(ctx: click.Context, flag: bool) -> bool:
    return flag or bool(ctx.obj and ctx.obj.get("verbose"))


@click.command("install")
@click.option("-t", "--tenant", default="", help="Tenant (the console's environment info).")
@click.option("-w", "--workspace", default="", help="Workspace.")
@click.option("-i", "--instanceid", "instance_id", default="", help="Instance ID.")
@click.option("-n", "--appname", "app", default="", help="App name as registered in the console.")
@click.option("-a", "--accesskey", "access_key", default="", help="Access key id.")
@click.option(
    "-s",
    "--secretkey",
    "secret_flag",
    default=None,
    help=f"Secret key ('-' reads stdin). Prefer ${settings.SECRET_ENV}, a file or stdin.",
)
@click.option(
    "--secretkey-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the secret key from this file.",
)
@click.option("--secretkey-stdin", is_flag=True, help="Read the secret key from stdin.")
@click.option("-f", "--artifacts", default="", help="Where the install package came from.")
@click.option("--console", "console_url", default="", help="Console URL, e.g. http://10.0.0.5:8000")
@click.option(
    "--backend",
    type=click.Choice(settings.BACKENDS),
    default="auto",
    show_default=True,
    help="Interception backend.",
)
@click.option("--ip", default="", help="This node's IP as listed in the console (default: auto).")
@click.option("--proxy-user", default="sofamesh-proxy", show_default=True, help="Sidecar's user.")
@click.option("--cgroup", default="", help="eBPF: the cgroup v2 whose processes are intercepted.")
@click.option("-v", "--verbose", "verbose_flag", is_flag=True, help="Show each step and command.")
@click.pass_context
def install_command(  # noqa: PLR0917  (one parameter per click option)
    ctx: click.Context,
    tenant: str,
    workspace: str,
    instance_id: str,
    app: str,
    access_key: str,
    secret_flag: str | None,
    secretkey_file: Path | None,
    secretkey_stdin: bool,
    artifacts: str,
    console_url: str,
    backend: str,
    ip: str,
    proxy_user: str,
    cgroup: str,
    verbose_flag: bool,
) -> None:
    """Install the agent and the sidecar on this node, and start following the console."""
    with errors_to_exit():
        wanted = NodeSettings(
            tenant=tenant,
            workspace=workspace,
            instance_id=instance_id,
            app=app,
            access_key=access_key,
            console=console_url,
            backend=backend,
            ip=ip,
            proxy_user=proxy_user,
            cgroup=cgroup,
            artifacts=artifacts,
        ).validate()
        secret = settings.resolve_secret(secret_flag, secretkey_file, secretkey_stdin)
        require_root("install")
        outcome = installer.install(
            _paths(ctx), wanted, secret, click.echo, _verbose(ctx, verbose_flag)
        )
    click.echo(outcome.message)


@click.command("uninstall")
@click.option("-v", "--verbose", "verbose_flag", is_flag=True, help="Show each step and command.")
@click.pass_context
def uninstall_command(ctx: click.Context, verbose_flag: bool) -> None:
    """Remove everything install created: rules, sidecar, agent, user, unit, files."""
    require_root("uninstall")
    with errors_to_exit():
        outcome = installer.uninstall(_paths(ctx), click.echo, _verbose(ctx, verbose_flag))
    click.echo(outcome.message)


@click.command("reinstall")
@click.option("-v", "--verbose", "verbose_flag", is_flag=True, help="Show each step and command.")
@click.pass_context
def reinstall_command(ctx: click.Context, verbose_flag: bool) -> None:
    """Uninstall and install again with the saved parameters (and the console's config)."""
    require_root("reinstall")
    with errors_to_exit():
        outcome = installer.reinstall(_paths(ctx), click.echo, _verbose(ctx, verbose_flag))
    click.echo(outcome.message)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status_command(ctx: click.Context, as_json: bool) -> None:
    """The agent, the sidecar and the rules as the agent last saw them."""
    paths = _paths(ctx)
    with errors_to_exit():
        saved = settings.load(paths)
    if saved is None:
        if as_json:
            echo_json({"installed": False})
        else:
            click.echo("not installed")
        raise SystemExit(int(ExitStatus.NOT_INSTALLED))
    doc = status_document(paths, saved)
    if as_json:
        echo_json(doc)
        return
    agent = doc["agent"]
    state = doc.get("node") or {}
    sidecar, rules = state.get("sidecar", {}), state.get("rules", {})
    rows = [
        ("app", f"{saved.app} ({saved.tenant}/{saved.workspace}/{saved.instance_id})"),
        ("console", f"{saved.console} (reachable: {state.get('console', {}).get('reachable')})"),
        ("agent", f"pid {agent['pid']}" if agent["running"] else "NOT RUNNING"),
        ("hijack", {True: "on", False: "off", None: "unknown"}[state.get("enabled")]),
        (
            "sidecar",
            f"{sidecar.get('status')} healthy={sidecar.get('healthy')} "
            f"pid={sidecar.get('pid')} restarts={sidecar.get('restarts')}",
        ),
        ("rules", f"{state.get('backend')} {rules.get('digest') or 'not installed'}"),
        (
            "config",
            f"version {state.get('config', {}).get('version')} "
            f"from {state.get('config', {}).get('source')}",
        ),
        ("converged", str(state.get("converged"))),
        ("updated", f"{doc['age_s']:.1f}s ago" if doc["age_s"] is not None else "never"),
    ]
    if state.get("error"):
        rows.append(("error", str(state["error"])))
    for name, value in rows:
        click.echo(f"{name:<10} {value}")


def status_document(paths: Paths, saved: NodeSettings) -> dict[str, Any]:
    state = read_json(paths.agent_status)
    pid = procs.read_pid(paths.agent_pid)
    updated = state.get("updated") if isinstance(state, dict) else None
    return {
        "installed": True,
        "app": saved.app,
        "console": saved.console,
        "agent": {"running": pid is not None, "pid": pid},
        "node": state,
        "age_s": time.time() - updated if updated else None,
    }


@click.command("logs")
@click.option("--sidecar", is_flag=True, help="The sidecar's log instead of the agent's.")
@click.option("-n", "--lines", default=50, show_default=True, help="How many lines.")
@click.pass_context
def logs_command(ctx: click.Context, sidecar: bool, lines: int) -> None:
    """The last lines of the agent's (or the sidecar's) log."""
    paths = _paths(ctx)
    path = paths.sidecar_log if sidecar else paths.agent_log
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            tail = deque(handle, maxlen=max(1, lines))
    except FileNotFoundError:
        fail(ExitStatus.NOT_INSTALLED, f"no log at {path}: is sofamesh installed?")
    click.echo("".join(tail), nl=False)


@click.group("agent")
def agent_group() -> None:
    """The node agent's daemon (started by install; run by systemd or the keeper)."""


@agent_group.command("run")
@click.pass_context
def agent_run_command(ctx: click.Context) -> None:
    """Run the agent in the foreground until SIGTERM."""
    from agent.daemon import run_agent  # noqa: PLC0415

    require_root("agent run")
    with errors_to_exit():
        run_agent(_paths(ctx), _verbose(ctx, False))


@agent_group.command("keep")
@click.pass_context
def agent_keep_command(ctx: click.Context) -> None:
    """Keep `agent run` running (where systemd does not): restart it when it dies."""
    from agent.keeper import run_keeper  # noqa: PLC0415

    require_root("agent keep")
    with errors_to_exit():
        run_keeper(_paths(ctx))


COMMANDS = (
    install_command,
    uninstall_command,
    reinstall_command,
    status_command,
    logs_command,
    agent_group,
)
