"""Errors raised by the interception engine.

Library code raises these; only the CLI turns them into one line and an exit code.
"""

from __future__ import annotations

from collections.abc import Sequence


class HijackError(Exception):
    """Base of every error the interception engine raises."""


class ConfigError(HijackError):
    """A configuration value is invalid. `field` is the dotted path of the bad key."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class BackendUnavailable(HijackError):
    """The requested backend cannot run on this host (missing tool, kernel feature...)."""


class NotRoot(HijackError):
    """Changing or reading kernel rules needs root (CAP_NET_ADMIN)."""


class CommandFailed(HijackError):
    """An external command exited non-zero."""

    def __init__(
        self, argv: Sequence[str], returncode: int, stderr: str, *, stdin: str | None = None
    ) -> None:
        first = stderr.strip().splitlines()[0] if stderr.strip() else "no error output"
        super().__init__(f"{argv[0]} exited {returncode}: {first}")
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        self.stdin = stdin


class ApplyFailed(HijackError):
    """Applying a plan failed; the previous rules were restored (or none were installed)."""


class TagConflict(HijackError):
    """Installed sofamesh objects disagree with what this backend expects.

    Raised, for example, when rules from the other netfilter variant (legacy vs nft) are
    present: mixing them is refused rather than guessed at.
    """
