"""The agent's systemd unit: systemd itself accepts it, and it says what R-AG-3/R-AG-9 need."""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from agent.units import UNIT_NAME, AgentUnitSpec, render_agent_unit, sd_notify, unit_path

pytestmark = pytest.mark.unit

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd)"
)


def _stub_executable(directory: Path) -> Path:
    # verify checks that ExecStart names an executable file; the content never runs.
    directory.mkdir(parents=True)
    exe = directory / "sofamesh"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    return exe


def _verify(unit_dir: Path, text: str) -> list[str]:
    """systemd-analyze's complaints about this unit (it exits 0 on unknown keys and bad values)."""
    unit = unit_dir / UNIT_NAME
    unit.write_text(text)
    assert SYSTEMD_ANALYZE is not None
    # No PID 1 systemd here: verify loads the file on its own, with the host's units
    # (network-online.target, multi-user.target) for the dependencies. Log to stderr,
    # never the journal, so that every warning is seen.
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", "--generators=no", str(unit)],
        capture_output=True,
        text=True,
        env={"SYSTEMD_LOG_TARGET": "console", "SYSTEMD_LOG_COLOR": "0", "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if str(unit) in line or UNIT_NAME in line
    ]
    if result.returncode != 0:
        complaints.append(f"exit {result.returncode}: {result.stderr.strip()}")
    return complaints


def _settings(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


@needs_systemd_analyze
def test_rendered_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    spec = AgentUnitSpec(executable=_stub_executable(tmp_path / "venv/bin"), root=tmp_path)
    assert _verify(tmp_path, render_agent_unit(spec)) == []


@needs_systemd_analyze
def test_unit_with_caps_off_and_watchdog_passes_verify(tmp_path: Path) -> None:
    spec = AgentUnitSpec(
        executable=_stub_executable(tmp_path / "venv/bin"),
        memory_max=None,
        cpu_weight=None,
        watchdog_sec=30,
    )
    assert _verify(tmp_path, render_agent_unit(spec)) == []


@needs_systemd_analyze
def test_verify_check_sees_warnings(tmp_path: Path) -> None:
    """The check above is worth something: a bad key or value is reported, not ignored."""
    spec = AgentUnitSpec(executable=_stub_executable(tmp_path / "venv/bin"))
    text = render_agent_unit(spec).replace("KillMode=process", "KillMode=sometimes")
    assert any("kill mode" in line.lower() for line in _verify(tmp_path, text))


@needs_systemd_analyze
def test_odd_paths_are_quoted_so_systemd_finds_the_executable(tmp_path: Path) -> None:
    # Spaces, '%' (a specifier) and '$' (a variable) must reach the process unchanged.
    exe = _stub_executable(tmp_path / "my venv %i $HOME/bin")
    spec = AgentUnitSpec(executable=exe, root=tmp_path / "root 100%")
    text = render_agent_unit(spec)
    assert _verify(tmp_path, text) == []
    exec_start = _settings(text)["Service"]["ExecStart"][0]
    # The executable is never $-expanded by systemd, its arguments are (systemd.service(5)).
    quoted_exe = '"' + str(exe).replace("%", "%%") + '"'
    quoted_root = '"' + str(tmp_path / "root 100%%") + '"'
    assert exec_start == f"{quoted_exe} --root {quoted_root} agent run"


def test_unit_has_the_settings_the_agent_relies_on(tmp_path: Path) -> None:
    exe = tmp_path / "opt/sofamesh/venv/bin/sofamesh"
    spec = AgentUnitSpec(
        executable=exe,
        root=tmp_path,
        memory_max=256 * 1024 * 1024,
        cpu_weight=50,
        oom_score_adjust=-300,
        restart_sec=3,
    )
    unit = _settings(render_agent_unit(spec))
    service = unit["Service"]
    assert service["ExecStart"] == [f"{exe} --root {tmp_path} agent run"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["Restart"] == ["always"]
    assert service["RestartSec"] == ["3"]
    # A restart or crash of the agent leaves the sidecar (and so the rules) running.
    assert service["KillMode"] == ["process"]
    assert service["Delegate"] == ["yes"]
    assert service["MemoryMax"] == [str(256 * 1024 * 1024)]
    assert service["CPUWeight"] == ["50"]
    assert service["OOMScoreAdjust"] == ["-300"]
    assert "WatchdogSec" not in service
    assert unit["Unit"]["After"] == ["network-online.target"]
    assert unit["Unit"]["Wants"] == ["network-online.target"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_unit_holds_no_secret() -> None:
    fields = {field.name for field in dataclasses.fields(AgentUnitSpec)}
    assert not any("secret" in name or "key" in name for name in fields)
    text = render_agent_unit(AgentUnitSpec(executable=Path("/opt/sofamesh/venv/bin/sofamesh")))
    environment = _settings(text)["Service"]["Environment"]
    assert environment == ["PYTHONUNBUFFERED=1"]
    assert "SECRET" not in text.upper()


def test_rendering_is_pure() -> None:
    spec = AgentUnitSpec(executable=Path("/opt/sofamesh/venv/bin/sofamesh"))
    assert render_agent_unit(spec) == render_agent_unit(dataclasses.replace(spec))


def test_unit_path_hangs_off_the_root(tmp_path: Path) -> None:
    assert unit_path(tmp_path) == tmp_path / "etc/systemd/system/sofamesh-agent.service"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"executable": Path("venv/bin/sofamesh")}, "executable"),
        ({"root": Path("relative")}, "root"),
        ({"root": Path("/srv/a\nExecStartPre=/bin/evil")}, "root"),
        ({"description": "x\n[Service]"}, "description"),
        ({"memory_max": 0}, "memory_max"),
        ({"cpu_weight": 0}, "cpu_weight"),
        ({"cpu_weight": 10001}, "cpu_weight"),
        ({"oom_score_adjust": -1001}, "oom_score_adjust"),
        ({"restart_sec": 0}, "restart_sec"),
        ({"watchdog_sec": 0}, "watchdog_sec"),
    ],
)
def test_bad_spec_is_refused_naming_the_field(changes: dict[str, object], field: str) -> None:
    base: dict[str, object] = {"executable": Path("/opt/sofamesh/venv/bin/sofamesh")}
    with pytest.raises(ValueError, match=f"^{field}: "):
        AgentUnitSpec(**{**base, **changes})  # type: ignore[arg-type]


def test_sd_notify_sends_one_datagram(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        assert sd_notify("READY=1", {"NOTIFY_SOCKET": str(path)})
        assert server.recv(64) == b"READY=1"


def test_sd_notify_abstract_socket(tmp_path: Path) -> None:
    name = f"sofamesh-test-{tmp_path.name}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        assert sd_notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert server.recv(64) == b"WATCHDOG=1"


def test_sd_notify_without_systemd_is_a_no_op() -> None:
    assert sd_notify("READY=1", {}) is False
