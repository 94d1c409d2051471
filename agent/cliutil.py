"""Shared helpers of the CLI commands: errors to exit codes, root check, JSON output."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click

from agent import errors as agent_errors
from agent.exit_codes import ExitStatus
from hijack import errors


def fail(status: ExitStatus, message: str) -> NoReturn:
    click.echo(f"sofamesh: error: {message}", err=True)
    sys.exit(int(status))


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        fail(ExitStatus.NOT_ROOT, f"{what} needs root (CAP_NET_ADMIN): run it with sudo")


@contextmanager
def errors_to_exit() -> Iterator[None]:
    """Turn library errors into one line and a distinct exit code."""
    table: list[tuple[type[Exception], ExitStatus]] = [
        (agent_errors.BadInput, ExitStatus.BAD_INPUT),
        (agent_errors.NotRegistered, ExitStatus.NOT_REGISTERED),
        (agent_errors.ConsoleFailure, ExitStatus.CONSOLE),
        (agent_errors.Busy, ExitStatus.BUSY),
        (agent_errors.NotInstalled, ExitStatus.NOT_INSTALLED),
        (agent_errors.InstallFailed, ExitStatus.ROLLED_BACK),
        (agent_errors.AgentError, ExitStatus.ERROR),
        (errors.ConfigError, ExitStatus.BAD_INPUT),
        (errors.NotRoot, ExitStatus.NOT_ROOT),
        (errors.BackendUnavailable, ExitStatus.BACKEND_UNSUPPORTED),
        (errors.ApplyFailed, ExitStatus.ROLLED_BACK),
        (errors.TagConflict, ExitStatus.CONFLICT),
        (errors.HijackError, ExitStatus.ERROR),
    ]
    try:
        yield
    except OSError as exc:  # the console probe, a lock file, a directory we must write
        fail(ExitStatus.ERROR, f"{exc.filename or ''} {exc.strerror or exc}".strip())
    except tuple(cls for cls, _ in table) as exc:
        status = next(code for cls, code in table if isinstance(exc, cls))
        fail(status, str(exc))


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))
