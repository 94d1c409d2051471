"""The one seam for running external commands (nft, ipset, iptables-save...).

Unit tests pass a RecordingRunner; everything else runs the real command. Every command
is logged at DEBUG so `-v` can show each command run (R-CLI-7).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hijack.errors import BackendUnavailable, CommandFailed

log = logging.getLogger("sofamesh.hijack.command")


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


class Runner(Protocol):
    def run(self, argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> Result:
        """Run argv; with check=True a non-zero exit raises CommandFailed."""

    def which(self, name: str) -> str | None:
        """Path of an executable, or None."""

    def read(self, path: str) -> str | None:
        """Contents of a (proc) file, or None when it cannot be read."""


class SubprocessRunner:
    """Runs commands for real, never through a shell."""

    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout

    def run(self, argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> Result:
        log.debug("run: %s%s", " ".join(argv), " (with input)" if stdin else "")
        try:
            proc = subprocess.run(
                list(argv),
                input=stdin,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except FileNotFoundError:
            raise BackendUnavailable(f"{argv[0]} is not installed") from None
        except subprocess.TimeoutExpired:
            raise CommandFailed(argv, -1, f"timed out after {self.timeout}s", stdin=stdin) from None
        if check and proc.returncode != 0:
            raise CommandFailed(argv, proc.returncode, proc.stderr, stdin=stdin)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def which(self, name: str) -> str | None:
        return shutil.which(name)

    def read(self, path: str) -> str | None:
        try:
            return Path(path).read_text()
        except OSError:
            return None


@dataclass
class RecordingRunner:
    """Records commands instead of running them; answers from `responder` (for unit tests)."""

    responder: Callable[[Sequence[str], str | None], Result] = field(
        default=lambda argv, stdin: Result(0, "", "")
    )
    present: frozenset[str] = frozenset({"nft", "ipset", "iptables-legacy-save"})
    files: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[list[str], str | None]] = field(default_factory=list)

    def run(self, argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> Result:
        self.calls.append((list(argv), stdin))
        result = self.responder(argv, stdin)
        if check and result.returncode != 0:
            raise CommandFailed(argv, result.returncode, result.stderr, stdin=stdin)
        return result

    def which(self, name: str) -> str | None:
        return f"/usr/sbin/{name}" if name in self.present else None

    def read(self, path: str) -> str | None:
        return self.files.get(path)
