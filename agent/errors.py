"""The agent's errors. Only the CLI turns them into a message and an exit code."""

from __future__ import annotations


class AgentError(Exception):
    """Base of everything the agent raises on purpose."""


class BadInput(AgentError):
    """A flag, file or console value is invalid; nothing was changed (R-SF-2)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}")


class NotRegistered(AgentError):
    """The console does not know this tenant/workspace/instance, app or node."""


class ConsoleFailure(AgentError):
    """The console could not be reached, or refused the access key."""


class Busy(AgentError):
    """Another install, uninstall or agent holds the node's lock."""


class NotInstalled(AgentError):
    """The command needs an installed node."""


class InstallFailed(AgentError):
    """A step failed after changes began; everything done so far was undone."""
