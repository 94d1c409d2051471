"""The systemd unit of the node agent, rendered from typed inputs (R-AG-3, R-AG-9).

`render_agent_unit` is a pure function: same spec, same text; no host probing, no files.
The install step writes the text to `unit_path(root)` and runs `systemctl`; hosts without
systemd use the pid-file launcher instead.

Choices, and why:

- `Type=notify`: `systemctl start` (and boot ordering) then means "the agent has adopted or
  started the sidecar and finished its first reconcile", not merely "a process was forked".
  The agent sends `READY=1` with `sd_notify` below once it gets there. `Type=simple` would
  report success even when the agent dies on its first line.
- `KillMode=process`: stopping, restarting or crashing the agent must never take the
  sidecar and the interception rules with it; the next agent adopts them (R-AG-3). The
  uninstall path stops the sidecar itself, in R-AG-2 order, before stopping the service.
- `Delegate=yes`: the agent owns the cgroup subtree below the service, so it can put the
  sidecar in a child cgroup with its own `memory.max` / `cpu.weight`. cgroup v2 allows no
  processes in an inner cgroup that has controllers enabled for its children, so the agent
  moves itself into a leaf (e.g. `agent/`) before enabling them (systemd 252 has no
  `DelegateSubgroup=`).
- `MemoryMax` / `CPUWeight` cap the service's whole subtree, agent plus sidecar (R-AG-9).
- `OOMScoreAdjust` is for the agent only (small, and what fails the node open when the
  sidecar dies); the agent gives the sidecar `oom_score_adj` 1000 so the kernel kills the
  sidecar before the app. Raising the score needs no privilege.
- No secret: the agent reads it from its 0600 file. There is no field for one.
- `StartLimitIntervalSec=0`: with `Restart=always`, a host that came up without its network
  must keep retrying instead of giving up after five quick failures.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

UNIT_NAME = "sofamesh-agent.service"

# systemd's own limits for these settings (systemd.resource-control(5), systemd.exec(5)).
CPU_WEIGHT_RANGE = (1, 10000)
OOM_SCORE_RANGE = (-1000, 1000)


@dataclass(frozen=True)
class AgentUnitSpec:
    """What the unit depends on; every field is checked when the spec is made."""

    executable: Path  # the venv's `sofamesh` console script, absolute
    root: Path = Path("/")  # passed as --root: every path the agent writes hangs off it
    memory_max: int | None = 512 * 1024 * 1024  # bytes for agent + sidecar; None: no cap
    cpu_weight: int | None = 100  # relative CPU share under contention; None: systemd default
    oom_score_adjust: int = -500  # the agent's; the sidecar gets 1000 from the agent
    restart_sec: int = 2  # pause before systemd restarts a dead agent
    watchdog_sec: int | None = None  # when set, the agent must send WATCHDOG=1 more often
    description: str = "sofamesh node agent (sidecar supervisor, interception rules)"

    def __post_init__(self) -> None:
        for name in ("executable", "root"):
            path = getattr(self, name)
            if not path.is_absolute():
                raise ValueError(f"{name}: {str(path)!r} is not an absolute path")
            _check_unit_text(name, str(path))
        _check_unit_text("description", self.description)
        if self.memory_max is not None and self.memory_max <= 0:
            raise ValueError(f"memory_max: {self.memory_max} is not a positive byte count")
        low, high = CPU_WEIGHT_RANGE
        if self.cpu_weight is not None and not low <= self.cpu_weight <= high:
            raise ValueError(f"cpu_weight: {self.cpu_weight} is outside [{low}, {high}]")
        low, high = OOM_SCORE_RANGE
        if not low <= self.oom_score_adjust <= high:
            raise ValueError(
                f"oom_score_adjust: {self.oom_score_adjust} is outside [{low}, {high}]"
            )
        if self.restart_sec <= 0:
            raise ValueError(f"restart_sec: {self.restart_sec} must be positive")
        if self.watchdog_sec is not None and self.watchdog_sec <= 0:
            raise ValueError(f"watchdog_sec: {self.watchdog_sec} must be positive")


def render_agent_unit(spec: AgentUnitSpec) -> str:
    """The unit file text for `sofamesh --root ROOT agent run`."""
    # The executable is not subject to $VAR expansion; its arguments are.
    arguments = [_exec_word(word).replace("$", "$$") for word in ("--root", str(spec.root))]
    command = " ".join([_exec_word(str(spec.executable)), *arguments, "agent", "run"])
    service = [
        "Type=notify",
        "NotifyAccess=main",  # only the agent itself may say READY; not the sidecar
        f"ExecStart={command}",
        "Restart=always",
        f"RestartSec={spec.restart_sec}",
        "KillMode=process",
        "Delegate=yes",
        f"OOMScoreAdjust={spec.oom_score_adjust}",
        "UMask=0077",  # state, logs and the cached config are the agent's alone
        "Environment=PYTHONUNBUFFERED=1",  # log lines reach the journal as they are written
    ]
    if spec.memory_max is not None:
        service.append(f"MemoryMax={spec.memory_max}")
    if spec.cpu_weight is not None:
        service.append(f"CPUWeight={spec.cpu_weight}")
    if spec.watchdog_sec is not None:
        service.append(f"WatchdogSec={spec.watchdog_sec}")
    lines = [
        "# Written by sofamesh install, removed by uninstall; reinstall rewrites it.",
        "[Unit]",
        f"Description={_unit_value(spec.description)}",
        "Wants=network-online.target",
        "After=network-online.target",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        *service,
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def unit_path(root: Path) -> Path:
    """Where install writes the unit: the admin's directory, which outranks packaged units."""
    return root / "etc/systemd/system" / UNIT_NAME


def sd_notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1") to systemd; False when not run by systemd as notify.

    The protocol is one datagram on the socket named by $NOTIFY_SOCKET (sd_notify(3)); an
    address starting with '@' is in the abstract namespace.
    """
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True


def _check_unit_text(name: str, value: str) -> None:
    # A newline would end the setting and start another one: refuse, never escape.
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise ValueError(f"{name}: {value!r} contains a control character")


def _unit_value(value: str) -> str:
    # '%' starts a specifier in every unit setting (systemd.unit(5)).
    return value.replace("%", "%%")


def _exec_word(word: str) -> str:
    """One ExecStart word: specifiers escaped, quoted when it holds a space or a quote."""
    word = _unit_value(word)
    if any(char in word for char in " \t\"'\\;"):
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word
