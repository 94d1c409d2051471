"""scripts/sofamesh.sh: options, root and OS checks, the secret, the venv and the hand-over.

No test here runs the real `sofamesh install`: the hand-over tests install a stand-in
`sofamesh` wheel whose console script records how it was called and exits with a chosen
code. So the script's whole path (OS package check, venv, offline pip, hand-over, rollback,
uninstall) runs for real under a temporary SOFAMESH_ROOT while no rule is ever installed.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.exit_codes import ExitStatus

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts/sofamesh.sh"
SECRET = "Zq9-top-secret-value-7Kx"  # noqa: S105  (a made-up secret to look for)
NOBODY = 65534
UNREACHABLE = "http://127.0.0.1:9/sofamesh-artifacts.tar.gz"  # discard port: refused at once
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="the script refuses to run without root")
# What `--backend auto` wants on Debian; present on a machine set up by scripts/dev.sh.
AUTO_PACKAGES = (
    "python3",
    "python3-venv",
    "python3-pip",
    "iproute2",
    "iptables",
    "ipset",
    "nftables",
    "python3-nftables",
)


def install_args(artifacts: str, *extra: str) -> list[str]:
    return [
        "install",
        "-t",
        "acme",
        "-w",
        "prod",
        "-i",
        "inst-1",
        "-n",
        "web-app",
        "-a",
        "key-0001",
        "-s",
        SECRET,
        "-f",
        artifacts,
        *extra,
    ]


def run_script(
    args: list[str], env: dict[str, str] | None = None, user: int | None = None
) -> subprocess.CompletedProcess[str]:
    command = ["bash", str(SCRIPT), *args]
    if user is not None:
        command = [
            "setpriv",
            f"--reuid={user}",
            f"--regid={user}",
            "--clear-groups",
            *command,
        ]
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    return subprocess.run(
        command,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd="/",
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sofamesh.sh: error: "), lines[0]
    return lines[0]


# --- options --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (install_args(UNREACHABLE)[:-2], "--artifacts"),  # -f left out
        ([a for a in install_args(UNREACHABLE) if a not in ("-t", "acme")], "--tenant"),
        ([a for a in install_args(UNREACHABLE) if a not in ("-s", SECRET)], "--secretkey"),
        (install_args(UNREACHABLE, "--backend", "bpfilter"), "--backend"),
        (install_args(UNREACHABLE, "--console", "ftp://console"), "--console"),
        (install_args("/nonexistent/artifacts"), "--artifacts"),
        (install_args(UNREACHABLE, "--colour"), "--colour"),
        (["install", "-t"], "--tenant"),
        (["install", "-t", "-w", "prod"], "--tenant"),
        (["install", "--workspace="], "--workspace"),
        (["uninstall", "-n", "web-app"], "--appname"),
        (["status", "--json=yes"], "--json"),
        (["reinstall", "--console", "http://c:1"], "--console"),
        (install_args(UNREACHABLE, "--ip", "node-1"), "--ip"),
        (install_args(UNREACHABLE, "--proxy-user", "Proxy User"), "--proxy-user"),
        (install_args(UNREACHABLE, "--cgroup", "sofamesh.slice"), "--cgroup"),
    ],
)
def test_bad_or_missing_option_names_it_and_exits_2(args: list[str], named: str) -> None:
    result = run_script(args)
    assert result.returncode == ExitStatus.BAD_INPUT
    assert named in one_line_error(result)
    assert SECRET not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("-n", "web_app"),  # app names: letters, digits and '-' only (R-CLI-2)
        ("-n", "x" * 64),
        ("-t", "acme corp"),
        ("-a", "k"),
    ],
)
def test_invalid_value_names_the_option(option: str, value: str) -> None:
    args = install_args(UNREACHABLE)
    args[args.index(option) + 1] = value
    result = run_script(args)
    assert result.returncode == ExitStatus.BAD_INPUT
    long = {"-n": "--appname", "-t": "--tenant", "-a": "--accesskey"}[option]
    assert long in one_line_error(result)


def test_missing_or_unknown_command_exits_2() -> None:
    for args in ([], ["deploy"]):
        result = run_script(args)
        assert result.returncode == ExitStatus.BAD_INPUT
        one_line_error(result)


def test_bad_input_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    result = run_script(
        install_args(UNREACHABLE, "--backend", "nope"), {"SOFAMESH_ROOT": str(root)}
    )
    assert result.returncode == ExitStatus.BAD_INPUT
    assert list(root.iterdir()) == []


def test_help_lists_every_option() -> None:
    result = run_script(["--help"])
    assert result.returncode == 0
    for short, long in [
        ("-t", "--tenant"),
        ("-w", "--workspace"),
        ("-i", "--instanceid"),
        ("-n", "--appname"),
        ("-a", "--accesskey"),
        ("-s", "--secretkey"),
        ("-f", "--artifacts"),
        ("-v", "--verbose"),
        ("-h", "--help"),
    ]:
        assert re.search(rf"^\s+{short}, {long}\b", result.stdout, re.MULTILINE), long
    for long in (
        "--console",
        "--backend",
        "--json",
        "--ip",
        "--proxy-user",
        "--cgroup",
        "SOFAMESH_ROOT",
        "SOFAMESH_SECRETKEY",
    ):
        assert long in result.stdout
    for command in ("install", "uninstall", "reinstall", "status"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.MULTILINE), command
    assert run_script(["install", "--help"]).stdout == result.stdout


def test_exit_codes_are_the_agents() -> None:
    """The script's EXIT_* constants are agent/exit_codes.py's, name for name."""
    constants = re.findall(r"^EXIT_([A-Z_]+)=(\d+)$", SCRIPT.read_text(), re.MULTILINE)
    assert constants
    for name, value in constants:
        assert ExitStatus[name] == int(value), name


# --- root, OS -------------------------------------------------------------------------


@pytest.mark.skipif(not IS_ROOT, reason="switching to an unprivileged user needs root")
@pytest.mark.parametrize("command", ["install", "uninstall", "reinstall"])
def test_not_root_exits_3(command: str) -> None:
    args = install_args(UNREACHABLE) if command == "install" else [command]
    result = run_script(args, user=NOBODY)
    assert result.returncode == ExitStatus.NOT_ROOT
    assert "root" in one_line_error(result)


@needs_root
def test_unsupported_os_exits_5(tmp_path: Path) -> None:
    os_release = tmp_path / "os-release"
    os_release.write_text('NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.20.0\n')
    result = run_script(install_args(UNREACHABLE), {"SOFAMESH_OS_RELEASE": str(os_release)})
    assert result.returncode == ExitStatus.BACKEND_UNSUPPORTED
    assert "unsupported OS 'alpine'" in one_line_error(result)


@needs_root
@pytest.mark.parametrize(
    ("os_release", "tool"),
    [
        ('ID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\n', "apt"),
        ('ID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.4"\n', "(dnf|yum)"),
        ('ID="rhel"\nVERSION_ID="9.4"\n', "(dnf|yum)"),
    ],
)
def test_supported_os_families(tmp_path: Path, os_release: str, tool: str) -> None:
    """Recognised, then stopped by the next step (an artifacts URL nobody serves)."""
    path = tmp_path / "os-release"
    path.write_text(os_release)
    result = run_script(install_args(UNREACHABLE, "-v"), {"SOFAMESH_OS_RELEASE": str(path)})
    assert re.search(rf"OS: \w+ \(packages: {tool}\)", result.stderr)
    assert result.returncode == ExitStatus.ERROR
    assert "could not download" in result.stderr


@needs_root
def test_secret_never_in_verbose_output_when_a_later_step_fails(tmp_path: Path) -> None:
    os_release = tmp_path / "os-release"
    os_release.write_text("ID=debian\n")
    for secret_args in (["-s", SECRET], [f"--secretkey={SECRET}"]):
        args = [a for a in install_args(UNREACHABLE, "-v") if a not in ("-s", SECRET)]
        result = run_script([*args, *secret_args], {"SOFAMESH_OS_RELEASE": str(os_release)})
        assert result.returncode == ExitStatus.ERROR
        assert "+ curl" in result.stderr  # -v showed the commands it ran
        assert SECRET not in result.stdout + result.stderr


# --- the whole path with a stand-in `sofamesh` ------------------------------------------

FAKE_CLI = """
import json, os, sys

def main():
    with open(os.environ["FAKE_RECORD"], "a") as out:
        parent = open(f"/proc/{os.getppid()}/cmdline", "rb").read().replace(b"\\0", b" ")
        out.write(json.dumps({
            "argv": sys.argv[1:],
            "secret": os.environ.get("SOFAMESH_SECRETKEY"),
            "parent_cmdline": parent.decode(),
            "prefix": sys.prefix,
        }) + "\\n")
    if "status" in sys.argv and "--json" in sys.argv:
        print(json.dumps({"installed": True}))
    sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
"""


def _fake_wheel(directory: Path, version: str) -> Path:
    """A real wheel named sofamesh whose console script is FAKE_CLI."""
    dist = f"sofamesh-{version}.dist-info"
    files = {
        "sofamesh_fake.py": FAKE_CLI.encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: sofamesh\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
        f"{dist}/entry_points.txt": b"[console_scripts]\nsofamesh = sofamesh_fake:main\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = directory / f"sofamesh-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return wheel


def _fake_artifacts(directory: Path, version: str = "0.0.1", console: str = "") -> Path:
    (directory / "wheels").mkdir(parents=True)
    _fake_wheel(directory / "wheels", version)
    settings = {"console": console} if console else {}
    (directory / "settings.json").write_text(json.dumps(settings))
    return directory


def _missing_packages() -> list[str]:
    missing = []
    for package in AUTO_PACKAGES:
        status = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package],
            capture_output=True,
            text=True,
            check=False,
        )
        if "install ok installed" not in status.stdout:
            missing.append(package)
    return missing


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A temporary install root, and the environment that points the script at it."""
    if not IS_ROOT:
        pytest.skip("the script refuses to run without root")
    if shutil.which("dpkg-query") is None:
        pytest.skip("needs a Debian-family host (dpkg-query) for the OS package check")
    missing = _missing_packages()
    if missing:
        # The script would apt-get install them: a test must not change the host's packages.
        pytest.skip(f"OS packages missing (scripts/dev.sh setup installs them): {missing}")
    root = tmp_path / "root"
    root.mkdir()
    env = {"SOFAMESH_ROOT": str(root), "FAKE_RECORD": str(tmp_path / "calls.jsonl")}
    yield root, env


def _calls(env: dict[str, str]) -> list[dict[str, Any]]:
    path = Path(env["FAKE_RECORD"])
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_install_hands_over_then_skips_pip_then_uninstall_leaves_nothing(
    node: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, env = node
    artifacts = _fake_artifacts(tmp_path / "artifacts", console="http://198.51.100.1:8443")
    venv = root / "opt/sofamesh/venv"

    first = run_script(install_args(str(artifacts), "-v"), env)
    assert first.returncode == 0, first.stderr
    assert "OS packages: all present" in first.stderr  # nothing installed on this host
    assert "installing sofamesh from" in first.stderr
    assert f"--system-site-packages {venv}" in first.stderr
    assert "ensurepip" not in first.stderr  # the system's pip does the work
    [call] = _calls(env)
    assert call["prefix"] == str(venv)
    assert call["argv"] == [
        "-v",
        "--root",
        str(root),
        "install",
        "--tenant",
        "acme",
        "--workspace",
        "prod",
        "--instanceid",
        "inst-1",
        "--appname",
        "web-app",
        "--accesskey",
        "key-0001",
        "--artifacts",
        str(artifacts),
        "--console",
        "http://198.51.100.1:8443",  # from settings.json
        "--backend",
        "auto",
    ]
    # The secret reaches the agent through its environment only (R-CLI-6): not in its
    # arguments, not in the script's own (re-executed without it), not in the -v output.
    assert call["secret"] == SECRET
    assert SECRET not in call["parent_cmdline"]
    assert "sofamesh.sh install" in str(call["parent_cmdline"])
    assert SECRET not in first.stdout + first.stderr
    assert "SOFAMESH_SECRETKEY=\\*\\*\\*\\*\\*\\*" in first.stderr

    # The same artifacts again, as a tarball this time: same wheels, so no pip run.
    tarball = tmp_path / "artifacts.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(artifacts, arcname="sofamesh-artifacts")
    again = run_script(
        install_args(str(tarball), "--console", "http://198.51.100.2:8443"),
        {**env, "SOFAMESH_SECRETKEY": "ignored-when-the-flag-is-given"},
    )
    assert again.returncode == 0, again.stderr
    assert "artifacts unchanged since the last install: skipping pip install" in again.stderr
    second = _calls(env)[1]
    assert second["secret"] == SECRET  # the flag wins over the environment
    assert second["argv"][-4:] == ["--console", "http://198.51.100.2:8443", "--backend", "auto"]

    status = run_script(["status", "--json"], env)
    assert status.returncode == 0
    assert json.loads(status.stdout) == {"installed": True}
    assert _calls(env)[2]["argv"] == ["--root", str(root), "status", "--json"]
    assert _calls(env)[2]["secret"] is None

    gone = run_script(["uninstall"], env)
    assert gone.returncode == 0, gone.stderr
    assert _calls(env)[3]["argv"] == ["--root", str(root), "uninstall"]
    assert list(root.iterdir()) == []  # opt/ too: install created it
    assert run_script(["status"], env).returncode == ExitStatus.NOT_INSTALLED


def test_secret_from_the_environment(node: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    _, env = node
    artifacts = _fake_artifacts(tmp_path / "artifacts")
    args = [a for a in install_args(str(artifacts), "--console", "http://c.test:80") if a != SECRET]
    args.remove("-s")
    extra = ["--ip", "198.51.100.7", "--proxy-user", "mesh-proxy", "--cgroup", "/sofamesh/app"]
    result = run_script([*args, *extra], {**env, "SOFAMESH_SECRETKEY": SECRET})
    assert result.returncode == 0, result.stderr
    assert _calls(env)[0]["secret"] == SECRET
    assert _calls(env)[0]["argv"][-6:] == extra  # passed through to sofamesh install
    assert run_script(["uninstall"], env).returncode == 0


def test_failed_first_install_passes_the_code_through_and_leaves_nothing(
    node: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, env = node
    (root / "opt").mkdir()  # an /opt that was there before stays
    artifacts = _fake_artifacts(tmp_path / "artifacts", console="http://198.51.100.1:8443")
    result = run_script(
        install_args(str(artifacts)), {**env, "FAKE_EXIT": str(int(ExitStatus.CONSOLE))}
    )
    assert result.returncode == ExitStatus.CONSOLE
    assert "removing" in result.stderr
    assert [p.relative_to(root) for p in root.rglob("*")] == [Path("opt")]


def test_uninstall_failure_keeps_the_venv_for_another_try(
    node: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, env = node
    artifacts = _fake_artifacts(tmp_path / "artifacts", console="http://198.51.100.1:8443")
    assert run_script(install_args(str(artifacts)), env).returncode == 0
    failed = run_script(["uninstall"], {**env, "FAKE_EXIT": str(int(ExitStatus.ROLLED_BACK))})
    assert failed.returncode == ExitStatus.ROLLED_BACK
    assert (root / "opt/sofamesh/venv/bin/sofamesh").exists()
    assert run_script(["uninstall"], env).returncode == 0
    assert list(root.iterdir()) == []


def test_new_artifacts_with_the_same_version_are_installed(
    node: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, env = node
    old = _fake_artifacts(tmp_path / "old", console="http://198.51.100.1:8443")
    new = _fake_artifacts(tmp_path / "new", console="http://198.51.100.1:8443")
    # Same version number, other content: a rebuilt package must still replace the old one.
    wheel = next((new / "wheels").iterdir())
    with zipfile.ZipFile(wheel, "a") as archive:
        archive.writestr("sofamesh_marker.py", "REBUILT = True\n")
    assert run_script(install_args(str(old)), env).returncode == 0
    result = run_script(["reinstall", "-f", str(new)], env)
    assert result.returncode == 0, result.stderr
    assert "installing sofamesh from" in result.stderr
    assert list(root.glob("opt/sofamesh/venv/lib/python3*/site-packages/sofamesh_marker.py"))
    assert _calls(env)[1]["argv"] == ["--root", str(root), "reinstall"]
    assert run_script(["uninstall"], env).returncode == 0


def test_uninstall_waits_for_a_running_install(
    node: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """One install/uninstall per root at a time (R-AG-8): the lock is on the root itself."""
    root, env = node
    fd = os.open(root, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    with subprocess.Popen(
        ["bash", str(SCRIPT), "uninstall"],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env},
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stderr is not None
        try:
            line = proc.stderr.readline()  # returns once the script says that it waits
            assert "another sofamesh.sh run holds" in line
            assert proc.poll() is None
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 0
    assert "nothing to uninstall" in rest


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt: shellcheck)"
)
def test_scripts_are_shellcheck_clean() -> None:
    scripts = [SCRIPT, REPO / "scripts/build-artifacts.sh"]
    result = subprocess.run(
        ["shellcheck", *map(str, scripts)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout
