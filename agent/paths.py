"""Every path the agent writes hangs off one root, so several test "nodes" share a machine."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Paths:
    root: Path

    @classmethod
    def from_env(cls, root: str | None = None) -> Paths:
        return cls(Path(root or os.environ.get("SOFAMESH_ROOT") or "/"))

    @property
    def state_dir(self) -> Path:
        return self.root / "var/lib/sofamesh"

    @property
    def hijack_state(self) -> Path:
        """The last applied interception config and backend (for status, drift, repair)."""
        return self.state_dir / "hijack.json"


def write_json_atomic(path: Path, data: Any, mode: int = 0o600) -> None:
    """Write, fsync, rename: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
