"""`sofamesh console ...`: serve the control plane and administer it."""

from __future__ import annotations

import click


@click.group("console")
def console_group() -> None:
    """The control plane: HTTP API, web UI and database."""
