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

    @property
    def etc_dir(self) -> Path:
        return self.root / "etc/sofamesh"

    @property
    def settings(self) -> Path:
        """What install was given (no secret): tenant, workspace, app, key id, console..."""
        return self.etc_dir / "agent.json"

    @property
    def secret(self) -> Path:
        """The access key's secret, 0600, read by the agent at start (R-CLI-6)."""
        return self.etc_dir / "secret"

    @property
    def sidecar_config(self) -> Path:
        """Readable by the proxy user: the sidecar reads it at start and on reload."""
        return self.etc_dir / "sidecar.json"

    @property
    def config_cache(self) -> Path:
        """The console's last config for this node: used while the console is away (R-AG-7)."""
        return self.state_dir / "node-config.json"

    @property
    def agent_status(self) -> Path:
        """What the agent last saw and did, rewritten every loop (status, install waits)."""
        return self.state_dir / "agent-status.json"

    @property
    def install_record(self) -> Path:
        """What install created (user, unit, files), so uninstall removes exactly that."""
        return self.state_dir / "install.json"

    @property
    def sidecar_state_dir(self) -> Path:
        """The sidecar's own directory (hot-restart socket), owned by the proxy user."""
        return self.state_dir / "sidecar"

    @property
    def run_dir(self) -> Path:
        return self.root / "run/sofamesh"

    @property
    def keeper_pid(self) -> Path:
        return self.run_dir / "keeper.pid"

    @property
    def agent_pid(self) -> Path:
        return self.run_dir / "agent.pid"

    @property
    def sidecar_pid(self) -> Path:
        return self.run_dir / "sidecar.pid"

    @property
    def install_lock(self) -> Path:
        return self.run_dir / "install.lock"

    @property
    def agent_lock(self) -> Path:
        return self.run_dir / "agent.lock"

    @property
    def log_dir(self) -> Path:
        return self.root / "var/log/sofamesh"

    @property
    def agent_log(self) -> Path:
        return self.log_dir / "agent.log"

    @property
    def sidecar_log(self) -> Path:
        return self.log_dir / "sidecar.log"


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
