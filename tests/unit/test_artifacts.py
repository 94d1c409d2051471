"""The node install package: only the node's dependencies, installable offline, runnable.

Builds the real package once for this module (scripts/build-artifacts.sh; a cold wheel
cache downloads the dependency wheels once) and installs it into a fresh venv that sees no
system packages, so a missing wheel cannot hide behind one the host happens to have.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.e2e.artifacts import BUILD_SCRIPT, REPO, build_artifacts, source_digest, tarball

pytestmark = [pytest.mark.unit, pytest.mark.slow]

CONSOLE = "http://198.51.100.1:8000"
SYSTEM_PYTHON = "/usr/bin/python3"  # what sofamesh.sh builds the node's venv from
CORE = {"sofamesh", "click", "httptools", "httpx", "psutil", "pyroute2", "python_iptables"}
CORE |= {"pyyaml", "uvloop"}
NOT_ON_NODES = {"fastapi", "uvicorn", "pydantic", "sqlalchemy", "alembic", "psycopg", "jinja2"}
NOT_ON_NODES |= {"fabric", "paramiko", "pytest", "ruff", "mypy"}


def _has_system_pip() -> bool:
    probe = [SYSTEM_PYTHON, "-m", "pip", "--version"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


pytestmark.append(
    pytest.mark.skipif(
        not os.access(SYSTEM_PYTHON, os.X_OK) or not _has_system_pip(),
        reason="needs Debian's python3 with pip (python3-pip; scripts/dev.sh setup installs it)",
    )
)


def _isolated_pip_env(**extra: str) -> dict[str, str]:
    """No pip configuration of this host: only what the command line names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


def _project(wheel: Path) -> str:
    return wheel.name.split("-")[0].lower()


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_artifacts(tmp_path_factory.mktemp("artifacts"), CONSOLE)


def test_package_holds_the_node_wheels_settings_and_script(package: Path) -> None:
    projects = {_project(w) for w in (package / "wheels").glob("*.whl")}
    assert projects >= CORE
    assert not projects & NOT_ON_NODES
    assert json.loads((package / "settings.json").read_text()) == {"console": CONSOLE}
    manifest = json.loads((package / "manifest.json").read_text())
    version = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert manifest["python"] == version  # sofamesh.sh refuses a mismatch (exit 5)
    script = package / "sofamesh.sh"
    assert script.read_bytes() == (REPO / "scripts/sofamesh.sh").read_bytes()
    assert os.access(script, os.X_OK)
    with tarfile.open(tarball(package)) as archive:
        names = set(archive.getnames())
    top = package.name
    assert {f"{top}/settings.json", f"{top}/manifest.json", f"{top}/sofamesh.sh"} <= names
    assert {f"{top}/wheels/{w.name}" for w in (package / "wheels").iterdir()} <= names


def test_node_wheels_install_offline_into_a_fresh_venv_and_run(
    package: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    # No system site packages here (a node's venv has them for python3-nftables and bcc):
    # every dependency must come from the package's wheels.
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True)
    pip = [SYSTEM_PYTHON, "-m", "pip", "--python", str(venv / "bin/python")]
    subprocess.run(
        [*pip, "install", "-q", "--no-index", "--find-links", str(package / "wheels"), "sofamesh"],
        env=_isolated_pip_env(),
        check=True,
        timeout=300,
    )
    sofamesh = str(venv / "bin/sofamesh")
    version = subprocess.run([sofamesh, "version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("sofamesh ")
    top = subprocess.run([sofamesh, "--help"], capture_output=True, text=True, check=True)
    listing = top.stdout.split("Commands:", 1)[1].splitlines()
    # Names sit two spaces in; wrapped descriptions are indented further.
    commands = [line.split()[0] for line in listing if re.match(r"^  \S", line)]
    assert "version" in commands
    for command in commands:
        # Every command's module loads without the console's or the fleet's packages.
        subprocess.run([sofamesh, command, "--help"], capture_output=True, check=True)
    no_console = subprocess.run(
        [str(venv / "bin/python"), "-c", "import fastapi"], capture_output=True, check=False
    )
    assert no_console.returncode != 0


def test_rebuild_needs_no_network_and_gives_the_same_wheel(package: Path, tmp_path: Path) -> None:
    before = source_digest()
    again = tmp_path / "again"
    # Any index access fails at once: a warm cache must be enough.
    env = _isolated_pip_env(PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_NO_INPUT="1")
    result = subprocess.run(
        [str(BUILD_SCRIPT), str(again), "--console", CONSOLE],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "fetching them from the package index" not in result.stderr
    if before[:12] not in package.name or source_digest() != before:
        pytest.skip("the sources changed since the first build: the wheels may differ, rightly")

    def digests(out: Path) -> dict[str, str]:
        return {
            w.name: hashlib.sha256(w.read_bytes()).hexdigest() for w in (out / "wheels").iterdir()
        }

    # Same bytes, so sofamesh.sh install on a node skips its pip step for a rebuilt package.
    assert digests(again) == digests(package)
    assert tarball(again).read_bytes() != b""
    shutil.rmtree(again)
