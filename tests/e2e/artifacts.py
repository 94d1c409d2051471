"""Build the node install package (scripts/build-artifacts.sh) once per test session.

    from tests.e2e.artifacts import build_artifacts, tarball
    package = build_artifacts(tmp_path_factory.mktemp("artifacts"), "http://198.51.100.1:8000")
    sofamesh.sh install ... -f package            # or -f tarball(package), or an http URL of it

Builds are keyed by a digest of the sources that go into the package (the packages'
files, pyproject.toml, README.md and the two scripts), so a session reuses one build for as
long as the code is unchanged, and a change made during the session gets a fresh one.
"""

from __future__ import annotations

import hashlib
import subprocess
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts/build-artifacts.sh"
BUILD_TIMEOUT = 900  # a cold wheel cache downloads and compiles the dependencies once

_built: dict[tuple[str, str | None], Path] = {}  # (source digest, console) -> OUT


class ArtifactsBuildError(RuntimeError):
    """build-artifacts.sh failed; the message holds its output."""


def source_digest() -> str:
    """sha256 over the path and content of every file that goes into the package."""
    with (REPO / "pyproject.toml").open("rb") as handle:
        includes = tomllib.load(handle)["tool"]["setuptools"]["packages"]["find"]["include"]
    files = [
        REPO / "pyproject.toml",
        REPO / "README.md",
        BUILD_SCRIPT,
        REPO / "scripts/sofamesh.sh",
    ]
    for package in includes:
        files.extend(
            path
            for path in (REPO / package.rstrip("*")).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        )
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def build_artifacts(tmp_dir: Path, console: str | None) -> Path:
    """The artifacts directory (wheels/, settings.json, manifest.json, sofamesh.sh).

    `tarball(path)` is the same package as a .tar.gz. A second call with the same console
    and unchanged sources returns the first build, wherever it was made.
    """
    key = (source_digest(), console)
    done = _built.get(key)
    if done is not None and (done / "manifest.json").is_file():
        return done
    console_tag = hashlib.sha256(console.encode()).hexdigest()[:8] if console else "noconsole"
    out = tmp_dir / f"sofamesh-artifacts-{key[0][:12]}-{console_tag}"
    command = [str(BUILD_SCRIPT), str(out)]
    if console:
        command += ["--console", console]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise ArtifactsBuildError(
            f"{' '.join(command)} exited {result.returncode}:\n{result.stderr}{result.stdout}"
        )
    _built[key] = out
    return out


def tarball(artifacts: Path) -> Path:
    """OUT.tar.gz beside OUT: one top-level directory named like OUT."""
    return artifacts.with_name(artifacts.name + ".tar.gz")
