"""`sofamesh hijack apply|remove|status|repair` and `sofamesh rules`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from agent.cliutil import echo_json, errors_to_exit, fail, require_root
from agent.exit_codes import ExitStatus
from agent.paths import Paths, read_json, write_json_atomic
from hijack import engine
from hijack.backends.ebpf import EbpfBackend, EbpfOptions
from hijack.command import SubprocessRunner
from hijack.config import HijackConfig, load_config
from hijack.detect import CHOICES, choose, make_backend, preferred
from hijack.listening import listening_ports
from hijack.model import Installed

BACKEND_OPTION = click.option(
    "--backend",
    type=click.Choice(CHOICES),
    default="auto",
    show_default=True,
    help="Interception backend; auto picks eBPF where it can run, else the one this "
    "host's netfilter uses.",
)
CGROUP_OPTION = click.option(
    "--cgroup",
    type=click.Path(file_okay=False, path_type=Path),
    help="eBPF: the cgroup v2 directory whose processes are intercepted "
    "(default: the root of the cgroup2 mount).",
)
CONFIG_FILE = click.Path(exists=False, dir_okay=False, path_type=Path)


def _paths(ctx: click.Context) -> Paths:
    return Paths.from_env(ctx.obj.get("root") if ctx.obj else None)


def _ebpf(ctx: click.Context, cgroup: Path | None = None) -> EbpfOptions:
    """eBPF pins live on a bpffs under the root (so test nodes never share pins); the
    cgroup comes from the flag, else from the last apply."""
    paths = _paths(ctx)
    if cgroup is None:
        saved = read_json(paths.hijack_state) or {}
        cgroup = Path(saved["cgroup"]) if saved.get("cgroup") else None
    return EbpfOptions(cgroup=cgroup, bpffs=paths.root / "sys/fs/bpf")


@click.group("hijack")
def hijack_group() -> None:
    """Install, remove and inspect the interception rules."""


@hijack_group.command("apply")
@click.option("--config", "config_file", type=CONFIG_FILE, required=True, help="YAML or JSON file.")
@BACKEND_OPTION
@CGROUP_OPTION
@click.option(
    "--force",
    is_flag=True,
    help="Apply even if nothing listens on the redirect ports (that blackholes traffic).",
)
@click.pass_context
def apply_command(
    ctx: click.Context, config_file: Path, backend: str, cgroup: Path | None, force: bool
) -> None:
    """Install the rules for CONFIG atomically (a second apply replaces the first)."""
    with errors_to_exit():
        config = load_config(config_file)
        require_root("hijack apply")
        missing = [
            f"{port} ({role})"
            for role, port in (
                ("inbound", config.inbound_redirect_port),
                ("outbound", config.outbound_redirect_port),
            )
            if port not in listening_ports()
        ]
        if missing and not force:
            fail(
                ExitStatus.SIDECAR_DOWN,
                f"nothing listens on {', '.join(missing)}: intercepted traffic would be "
                "blackholed. Start the sidecar first (or pass --force).",
            )
        options = _ebpf(ctx, cgroup)
        result = engine.apply(config, backend, options=options)
        state = {"backend": result.backend, "config": config.to_document(), "digest": result.digest}
        if result.backend == "ebpf" and options.cgroup is not None:
            state["cgroup"] = str(options.cgroup)
        write_json_atomic(_paths(ctx).hijack_state, state)
    verb = "applied" if result.changed else "already applied, nothing changed"
    click.echo(f"{verb}: backend {result.backend} ({result.reason}); digest {result.digest}")
    for note in result.plan.notes:
        click.echo(f"  {note}")


@hijack_group.command("remove")
@BACKEND_OPTION
@click.option(
    "--park",
    is_flag=True,
    help="Stop intercepting new connections but keep those already redirected working "
    "(for draining the sidecar); run a plain remove afterwards.",
)
@click.pass_context
def remove_command(ctx: click.Context, backend: str, park: bool) -> None:
    """Remove every sofamesh rule and set (and nothing else)."""
    require_root("hijack remove")
    with errors_to_exit():
        removed = engine.remove(backend, park=park, options=_ebpf(ctx))
    _paths(ctx).hijack_state.unlink(missing_ok=True)
    if park:
        click.echo(
            "parked: new connections go direct; redirected ones keep working until "
            "`sofamesh hijack remove`"
        )
    else:
        click.echo(f"removed from {', '.join(removed)}" if removed else "nothing to remove")


@hijack_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--config",
    "config_file",
    type=CONFIG_FILE,
    help="Compare with this config instead of the last applied one.",
)
@click.option(
    "--check",
    is_flag=True,
    help=f"Exit {int(ExitStatus.DRIFT)} when installed rules drift from the desired ones.",
)
@click.pass_context
def status_command(
    ctx: click.Context, as_json: bool, config_file: Path | None, check: bool
) -> None:
    """Installed rules with hit counters, their digest, and drift from the desired config."""
    require_root("hijack status")
    with errors_to_exit():
        config = load_config(config_file) if config_file else _saved_config(ctx)
        options = _ebpf(ctx)
        status = engine.status(config, options=options)
        doc = _status_document(status)
        if status.backend == "ebpf":
            doc["bpf"] = EbpfBackend(SubprocessRunner(), options).objects()
    if as_json:
        echo_json(doc)
    else:
        _print_status(doc)
    if check and (status.drift or (config is not None and status.installed is None)):
        raise SystemExit(int(ExitStatus.DRIFT))


@hijack_group.command("repair")
@click.pass_context
def repair_command(ctx: click.Context) -> None:
    """Re-apply the last applied config if the installed rules drifted from it."""
    require_root("hijack repair")
    with errors_to_exit():
        saved = read_json(_paths(ctx).hijack_state)
        if saved is None:
            fail(ExitStatus.BAD_INPUT, "nothing was applied yet: use `sofamesh hijack apply`")
        config = HijackConfig.parse(saved["config"], source="saved state")
        result = engine.apply(config, saved["backend"], options=_ebpf(ctx))
    click.echo("repaired drift" if result.changed else "no drift: nothing to repair")


@click.command("rules")
@click.option("--config", "config_file", type=CONFIG_FILE, required=True, help="YAML or JSON file.")
@BACKEND_OPTION
@click.option("--dry-run", is_flag=True, help="Print exactly what apply would load; needs no root.")
@click.pass_context
def rules_command(ctx: click.Context, config_file: Path, backend: str, dry_run: bool) -> None:
    """Show the planned rules (--dry-run), or planned vs installed with hit counters."""
    runner = SubprocessRunner()
    with errors_to_exit():
        config = load_config(config_file)
        plan = engine.plan(config, require_user=not dry_run)
        if dry_run:
            name = backend if backend != "auto" else _dry_run_backend(runner)
            click.echo(make_backend(name, runner).render(plan), nl=False)
            return
        require_root("rules")
        chosen = choose(backend, runner, _ebpf(ctx)).backend
        expected = chosen.expected_view(plan)
        installed = chosen.inspect()
    click.echo(f"planned digest:   {expected.digest}")
    shown = installed.digest if not installed.view.empty else "(nothing installed)"
    click.echo(f"installed digest: {shown}")
    for line in expected.diff(installed.view) or ["in sync"]:
        click.echo(f"  {line}")
    _print_rules(installed)


def _dry_run_backend(runner: SubprocessRunner) -> str:
    try:
        return preferred(runner)[0]
    except Exception:  # without root some probes fail; the plan text is what matters
        return "nftables"


def _saved_config(ctx: click.Context) -> HijackConfig | None:
    saved = read_json(_paths(ctx).hijack_state)
    return HijackConfig.parse(saved["config"], source="saved state") if saved else None


def _status_document(status: engine.Status) -> dict[str, Any]:
    installed = status.installed
    return {
        "backend": status.backend,
        "installed": installed is not None and bool(installed.rules),
        "digest": installed.digest if installed else None,
        "expected_digest": status.expected_digest,
        "in_sync": status.in_sync,
        "drift": list(status.drift),
        "rules": [
            {
                "table": r.table,
                "chain": r.chain,
                "rule": r.text,
                "comment": r.comment,
                "packets": r.packets,
                "bytes": r.bytes,
            }
            for r in (installed.rules if installed else ())
        ],
        "sets": dict(installed.set_sizes) if installed else {},
    }


def _print_status(doc: dict[str, Any]) -> None:
    if not doc["installed"]:
        click.echo("no sofamesh rules installed")
    else:
        click.echo(f"backend: {doc['backend']}")
        click.echo(f"digest:  {doc['digest']}")
    if doc["expected_digest"]:
        click.echo("drift:   " + ("none" if doc["in_sync"] else "; ".join(doc["drift"])))
    for name, size in doc["sets"].items():
        click.echo(f"set {name}: {size} entries")
    for obj in doc.get("bpf", []):
        detail = " ".join(f"{k}={v}" for k, v in obj.items() if k not in ("kind", "pin"))
        click.echo(f"bpf {obj['kind']:<4} {obj['pin']}  {detail}")
    if doc["rules"]:
        click.echo(f"{'packets':>10} {'bytes':>12}  rule")
        for r in doc["rules"]:
            click.echo(f"{r['packets']:>10} {r['bytes']:>12}  [{r['chain']}] {r['rule']}")


def _print_rules(installed: Installed) -> None:
    if installed.rules:
        click.echo(f"{'packets':>10} {'bytes':>12}  rule")
    for r in installed.rules:
        click.echo(f"{r.packets:>10} {r.bytes:>12}  [{r.chain}] {r.text}")
