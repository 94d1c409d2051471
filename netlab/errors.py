"""Errors raised by the network lab, each carrying the context needed to debug it."""

from __future__ import annotations

from collections.abc import Sequence


class LabError(Exception):
    """Something in the lab failed; the message says what, the attributes say where."""

    def __init__(
        self,
        message: str,
        *,
        cmd: Sequence[str] | None = None,
        netns: str | None = None,
        returncode: int | None = None,
        stdout: str | None = None,
        stderr: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.cmd = list(cmd) if cmd is not None else None
        self.netns = netns
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    def __str__(self) -> str:
        lines = [self.message]
        if self.netns is not None:
            lines.append(f"  netns: {self.netns}")
        if self.cmd is not None:
            lines.append(f"  cmd: {' '.join(self.cmd)}")
        if self.returncode is not None:
            lines.append(f"  returncode: {self.returncode}")
        if self.stderr:
            lines.append(f"  stderr: {self.stderr.strip()}")
        return "\n".join(lines)


class LabCommandError(LabError):
    """A command (inside a VM or building the lab) exited with a non-zero status."""


class LabTimeout(LabError):
    """A condition did not become true, or a command did not finish, before its deadline."""


class LabTerminated(KeyboardInterrupt):
    """SIGTERM arrived while a lab was active.

    It derives from KeyboardInterrupt, not LabError, on purpose: `except LabError` or
    `except Exception` in a test must not swallow it, and pytest treats it like Ctrl-C
    (tears fixtures down and stops the session) instead of failing one test and going on.
    """
