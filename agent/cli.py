"""The sofamesh command line. The only place that prints and chooses exit codes."""

from __future__ import annotations

import logging
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import click

from agent.cliutil import fail, require_root
from agent.console_cli import console_group
from agent.exit_codes import ExitStatus
from agent.hijack_cli import hijack_group, rules_command
from agent.node_cli import COMMANDS as NODE_COMMANDS
from agent.sidecar_cli import sidecar_group

log = logging.getLogger("sofamesh")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Show each step and each command run.")
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SOFAMESH_ROOT",
    help="Prefix for every path sofamesh writes (state, logs); default /.",
)
@click.pass_context
def main(ctx: click.Context, verbose: bool, root: Path | None) -> None:
    """sofamesh: bring applications on plain VMs into a service mesh.

    Exit codes: 0 ok, 1 error, 2 bad input, 3 not root, 4 console unreachable or
    authentication failed, 5 backend unsupported, 6 failed and rolled back,
    7 conflicting installed state, 8 drift (status --check), 9 sidecar not listening,
    10 not registered in the console (tenant/workspace/instance, app or node unknown),
    11 another install/uninstall is running, 12 not installed.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="sofamesh: %(message)s",
        stream=sys.stderr,
    )
    ctx.obj = {"root": str(root) if root else None, "verbose": verbose}


@main.command("version")
def version_command() -> None:
    """Print the sofamesh version."""
    try:
        click.echo(f"sofamesh {version('sofamesh')}")
    except PackageNotFoundError:
        click.echo("sofamesh (not installed as a package)")


@main.command("demo")
@click.option(
    "--backend",
    type=click.Choice(["auto", "iptables", "nftables", "ebpf"]),
    default="auto",
    show_default=True,
)
def demo_command(backend: str) -> None:
    """Run the whole flow in network-namespace VMs (needs root; touches nothing else)."""
    from agent.demo import DemoError, run_demo  # noqa: PLC0415  (netlab only needed here)

    require_root("the demo")
    try:
        run_demo(backend, click.echo)
    except DemoError as exc:
        fail(ExitStatus.ERROR, f"demo: {exc}")
    click.echo("demo finished: exit 0")


main.add_command(hijack_group)
main.add_command(rules_command)
main.add_command(sidecar_group)
main.add_command(console_group)
for command in NODE_COMMANDS:
    main.add_command(command)
