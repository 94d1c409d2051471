"""`sofamesh sidecar run`: the bundled proxy (see sidecar/CONTRACT.md)."""

from __future__ import annotations

from pathlib import Path

import click

from agent.cliutil import fail
from agent.exit_codes import ExitStatus


@click.group("sidecar")
def sidecar_group() -> None:
    """The bundled sidecar proxy."""


@sidecar_group.command("run")
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), required=True
)
@click.option("--hot-restart", is_flag=True, help="Take over the listeners of the running sidecar.")
def run_command(config_file: Path, hot_restart: bool) -> None:
    """Run the sidecar in the foreground until SIGTERM (drains) or a hot restart replaces it."""
    from sidecar.app import run  # noqa: PLC0415  (uvloop and httptools only load here)
    from sidecar.errors import SidecarConfigError, SidecarError  # noqa: PLC0415

    try:
        code = run(config_file, hot_restart=hot_restart)
    except SidecarConfigError as exc:
        fail(ExitStatus.BAD_INPUT, str(exc))
    except SidecarError as exc:
        fail(ExitStatus.ERROR, str(exc))
    raise SystemExit(code)
