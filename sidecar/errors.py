"""Errors raised by the sidecar; only the CLI turns them into a message and an exit code."""

from __future__ import annotations


class SidecarError(Exception):
    """Base of every sidecar error."""


class SidecarConfigError(SidecarError):
    """A sidecar config value is invalid. `field` is the dotted path of the bad key."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class HotRestartError(SidecarError):
    """Taking over the listening sockets from a running sidecar failed."""
