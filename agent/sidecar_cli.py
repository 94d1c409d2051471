"""`sofamesh sidecar run`: the bundled proxy (see sidecar/CONTRACT.md)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click


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
    # Exec a lean interpreter: the proxy should not carry the CLI's modules for its lifetime.
    argv = [sys.executable, "-m", "sidecar", "--config", str(config_file)]
    if hot_restart:
        argv.append("--hot-restart")
    os.execv(sys.executable, argv)  # noqa: S606  (argv list, no shell)
