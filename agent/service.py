"""Installing the agent's systemd unit where systemd runs (R-AG-3). The unit's text is
agent/units.py's; this module only writes it and drives systemctl. (Where systemd is not
PID 1, agent/keeper.py is the service instead.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from agent.errors import AgentError
from agent.paths import Paths
from agent.units import UNIT_NAME, AgentUnitSpec, render_agent_unit, unit_path


def _systemctl(*args: str, detail: Callable[[str], None], check: bool = True) -> None:
    argv = ["systemctl", *args]
    detail("$ " + " ".join(argv))
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise AgentError(f"{' '.join(argv)}: {done.stderr.strip()}")


def install_unit(paths: Paths, detail: Callable[[str], None]) -> None:
    executable = Path(sys.executable).with_name("sofamesh")
    if not executable.exists():
        executable = Path(shutil.which("sofamesh") or executable)
    path = unit_path(paths.root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_agent_unit(AgentUnitSpec(executable=executable, root=paths.root)))
    _systemctl("daemon-reload", detail=detail)
    _systemctl("enable", "--now", UNIT_NAME, detail=detail)


def remove_unit(paths: Paths, detail: Callable[[str], None]) -> None:
    path = unit_path(paths.root)
    if not path.exists():
        return
    _systemctl("disable", "--now", UNIT_NAME, detail=detail, check=False)
    path.unlink()
    _systemctl("daemon-reload", detail=detail, check=False)
