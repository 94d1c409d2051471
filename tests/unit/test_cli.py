"""CLI contracts that need no kernel: dry-run without root, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.exit_codes import ExitStatus

pytestmark = pytest.mark.unit

NOBODY = 65534


def test_dry_run_works_without_root() -> None:
    """Run as an unprivileged user (when we are root) to prove no privilege is needed."""
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # noqa: S103  (the unprivileged user must read the config)
        config = Path(tmp) / "c.json"
        config.write_text(json.dumps({"outbound": {"exclude_cidrs": ["10.0.0.0/8"]}}))
        config.chmod(0o644)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "agent",
                "rules",
                "--dry-run",
                "--backend",
                "nftables",
                "--config",
                str(config),
            ],
            capture_output=True,
            text=True,
            user=NOBODY if os.geteuid() == 0 else None,
            cwd=tmp,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert "table inet sofamesh {" in result.stdout
    assert "elements = { 10.0.0.0/8 }" in result.stdout
    assert "(not yet created)" in result.stdout  # sofamesh-proxy does not exist here


def test_bad_config_is_one_line_naming_the_field_with_the_bad_input_code(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("outbound:\n  exclude_cidrs: [10.0.0.0/33]\n")
    result = CliRunner().invoke(
        main, ["rules", "--dry-run", "--backend", "iptables", "--config", str(config)]
    )
    assert result.exit_code == ExitStatus.BAD_INPUT
    assert result.output.strip().splitlines() == [
        "sofamesh: error: outbound.exclude_cidrs[0]: '10.0.0.0/33' is not a valid CIDR: "
        "'33' is not a valid netmask"
    ]


def test_every_command_has_help() -> None:
    for args in (
        ["--help"],
        ["hijack", "--help"],
        ["hijack", "apply", "--help"],
        ["hijack", "status", "--help"],
        ["hijack", "remove", "--help"],
        ["hijack", "repair", "--help"],
        ["rules", "--help"],
        ["demo", "--help"],
        ["version", "--help"],
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, args
        assert "Usage:" in result.output


def test_exit_codes_are_distinct() -> None:
    values = [int(s) for s in ExitStatus]
    assert len(values) == len(set(values))
