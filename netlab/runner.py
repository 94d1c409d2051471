"""The one place the lab runs commands: text in and out, errors with context."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence

from netlab.errors import LabCommandError, LabError, LabTimeout


def run_cmd(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30.0,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    netns: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `argv`, capture stdout/stderr as text, raise a LabError subclass on failure.

    `netns` is only context for the error message: `argv` must already enter it.
    """
    args = list(argv)
    try:
        done = subprocess.run(
            args,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabTimeout(
            f"command did not finish within {timeout}s",
            cmd=args,
            netns=netns,
            stderr=_text(exc.stderr),
        ) from exc
    except OSError as exc:
        raise LabError(f"cannot run {args[0]!r}: {exc}", cmd=args, netns=netns) from exc
    if check and done.returncode != 0:
        raise LabCommandError(
            f"command failed with exit status {done.returncode}",
            cmd=args,
            netns=netns,
            returncode=done.returncode,
            stdout=done.stdout,
            stderr=done.stderr,
        )
    return done


def _text(data: str | bytes | None) -> str | None:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data
