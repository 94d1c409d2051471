"""What `sofamesh install` was given, validated and saved (R-CLI-1, R-CLI-2, R-CLI-6).

The settings file holds everything but the secret; the secret lives in its own 0600 file
and is read only by the agent. Every validation error names the option it came from, and
nothing is written until all of them pass (R-SF-2).
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from agent.errors import BadInput
from agent.paths import Paths, read_json, write_json_atomic
from hijack.backends.ebpf import EbpfOptions

APP_NAME_RE = re.compile(r"^[A-Za-z0-9-]{1,63}$")  # the console's rule (R-CLI-2)
SCOPE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
KEY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{4,64}$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
BACKENDS = ("auto", "iptables", "nftables", "ebpf")
SECRET_ENV = "SOFAMESH_SECRETKEY"  # noqa: S105  (the variable's name, not a secret)
MAX_SECRET = 256


@dataclass(frozen=True)
class NodeSettings:
    tenant: str
    workspace: str
    instance_id: str
    app: str
    access_key: str
    console: str
    backend: str = "auto"
    ip: str = ""  # empty: the address this node reaches the console from
    proxy_user: str = "sofamesh-proxy"
    cgroup: str = ""  # eBPF: the cgroup v2 whose processes are intercepted
    artifacts: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> NodeSettings:
        checks = [
            ("--tenant", self.tenant, SCOPE_NAME_RE, "letters, digits, '_', '.', '-'"),
            ("--workspace", self.workspace, SCOPE_NAME_RE, "letters, digits, '_', '.', '-'"),
            ("--instanceid", self.instance_id, SCOPE_NAME_RE, "letters, digits, '_', '.', '-'"),
            ("--appname", self.app, APP_NAME_RE, "letters, digits and '-', at most 63"),
            ("--accesskey", self.access_key, KEY_ID_RE, "the access key id from the console"),
            ("--proxy-user", self.proxy_user, USER_RE, "a Linux user name"),
        ]
        for option, value, pattern, rule in checks:
            if not value:
                raise BadInput(option, "is required")
            if not pattern.match(value):
                raise BadInput(option, f"{value!r} is not valid ({rule})")
        url = urlsplit(self.console)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise BadInput("--console", f"{self.console!r} is not an http(s) URL")
        if self.backend not in BACKENDS:
            raise BadInput("--backend", f"{self.backend!r}: choose from {', '.join(BACKENDS)}")
        if self.ip:
            try:
                ipaddress.ip_address(self.ip)
            except ValueError:
                raise BadInput("--ip", f"{self.ip!r} is not an IP address") from None
        if self.cgroup and not self.cgroup.startswith("/"):
            raise BadInput("--cgroup", f"{self.cgroup!r} must be an absolute path")
        return self

    def same_install(self, other: NodeSettings) -> bool:
        """Equal in everything that changes what gets installed."""
        mine, theirs = asdict(self), asdict(other)
        for volatile in ("artifacts", "extra"):
            mine.pop(volatile)
            theirs.pop(volatile)
        return mine == theirs

    @property
    def effective_backend(self) -> str:
        """The backend install chose (auto resolved once, so it never changes later)."""
        return str(self.extra.get("resolved_backend") or self.backend)

    def ebpf_options(self, root: Path) -> EbpfOptions:
        """Where the eBPF backend attaches (--cgroup; default the cgroup2 root) and pins (the
        bpffs under the install root, so test nodes never share pins)."""
        return EbpfOptions(
            cgroup=Path(self.cgroup) if self.cgroup else None, bpffs=root / "sys/fs/bpf"
        )

    @property
    def console_host(self) -> str:
        return urlsplit(self.console).hostname or ""

    @property
    def console_port(self) -> int:
        url = urlsplit(self.console)
        return url.port or (443 if url.scheme == "https" else 80)


def save(paths: Paths, settings: NodeSettings, secret: str) -> None:
    paths.etc_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.etc_dir, 0o755)  # noqa: S103  (the proxy user reads sidecar.json here)
    write_json_atomic(paths.settings, asdict(settings), mode=0o600)
    write_secret(paths.secret, secret)


def load(paths: Paths) -> NodeSettings | None:
    doc = read_json(paths.settings)
    if doc is None:
        return None
    try:
        return NodeSettings(**doc).validate()
    except (TypeError, BadInput) as exc:
        raise BadInput(str(paths.settings), f"is damaged: {exc}") from None


def write_secret(path: Path, secret: str) -> None:
    """0600 from the first byte: created with O_EXCL under a temporary name, then renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secret)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_secret(paths: Paths) -> str:
    try:
        return paths.secret.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise BadInput(str(paths.secret), "is missing: run `sofamesh install`") from None


def resolve_secret(
    flag: str | None, file: Path | None, use_stdin: bool, stdin: IO[str] | None = None
) -> str:
    """The secret from exactly one place: --secretkey, --secretkey-file, --secretkey-stdin
    or the environment (R-CLI-6). '-s -' also means stdin."""
    env = os.environ.get(SECRET_ENV)
    if flag == "-":
        flag, use_stdin = None, True
    given = [
        name
        for name, present in (
            ("--secretkey", flag is not None),
            ("--secretkey-file", file is not None),
            ("--secretkey-stdin", use_stdin),
        )
        if present
    ]
    if len(given) > 1:
        raise BadInput(given[1], f"give the secret in one way only (also got {given[0]})")
    if flag is not None:
        secret, source = flag, "--secretkey"
    elif file is not None:
        try:
            secret, source = file.read_text(encoding="utf-8"), "--secretkey-file"
        except OSError as exc:
            raise BadInput("--secretkey-file", f"cannot read {file}: {exc.strerror}") from None
    elif use_stdin:
        secret, source = (stdin or sys.stdin).readline(), "--secretkey-stdin"
    elif env is not None:
        secret, source = env, SECRET_ENV
    else:
        raise BadInput("--secretkey", f"is required (or {SECRET_ENV}, a file or stdin)")
    secret = secret.strip()
    if not secret or len(secret) > MAX_SECRET or any(c.isspace() for c in secret):
        raise BadInput(source, "is empty or not a valid secret key")
    return secret
