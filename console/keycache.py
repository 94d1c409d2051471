"""Access keys by id, so an agent's signature is checked without a database round trip."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeyRow:
    secret: str
    instance_id: int


class KeyCache:
    """Keys are few (at most 2 per user) and never change, only disappear. A deleted key
    may linger here: `console.auth.admit` finds it gone in the request's own transaction
    and refuses the request (on every replica, at once)."""

    def __init__(self) -> None:
        self._rows: dict[str, KeyRow] = {}

    def get(self, key_id: str) -> KeyRow | None:
        return self._rows.get(key_id)

    def put(self, key_id: str, row: KeyRow) -> None:
        self._rows[key_id] = row

    def forget(self, key_id: str) -> None:
        self._rows.pop(key_id, None)
