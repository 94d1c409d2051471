"""Errors of the console. Library code raises these; the API and the CLI render them."""

from __future__ import annotations

from collections.abc import Sequence

Loc = Sequence[str | int]


class ConsoleError(Exception):
    """Base of every console error; `status` is the HTTP status the API answers with."""

    status = 400

    def __init__(self, message: str, loc: Loc | None = None) -> None:
        super().__init__(f"{'.'.join(map(str, loc))}: {message}" if loc else message)
        self.message = message
        self.loc = tuple(loc) if loc else None


class BadInput(ConsoleError):
    status = 422


class NotFound(ConsoleError):
    status = 404


class Conflict(ConsoleError):
    status = 409


class Unauthorized(ConsoleError):
    status = 401


class Forbidden(ConsoleError):
    status = 403


class ClientGone(ConsoleError):
    """The client closed its connection before its request was read: nobody is left to
    answer (nginx's 499), and it is no error of the console."""

    status = 499

    def __init__(self) -> None:
        super().__init__("client closed the connection")
