"""Sidecar configuration: parsed and validated at the edge, then frozen.

File (YAML or JSON); every key optional, `{}` means all defaults:

    inbound:  {port: 15006}             # listener for redirected inbound connections
    outbound: {port: 15001}             # listener for redirected outbound connections
    bind: "::"                          # listeners' address ("::" takes IPv4 and IPv6)
    admin: {address: 127.0.0.1, port: 15000}
    workers: 1                          # processes serving the listeners (SO_REUSEPORT)
    original_dst: nat                   # nat: SO_ORIGINAL_DST; local: the socket's own address
    inbound_source: 127.0.0.6           # source of connections to the local app ("" = none)
    inbound_source6: "::6"              # the same for IPv6 (the hijack backend puts it on lo)
    limits: {"8080": 100}               # max concurrent requests per app port, 0 = unlimited
    timeouts: {connect: 5, idle: 300, drain: 15, request_head: 60}
    access_log: {path: "", max_bytes: 10485760, backups: 3}
    log_level: INFO                     # FATAL ERROR WARN INFO DEBUG TRACE
    state_dir: ""                       # where the hot-restart socket lives ("" = no hot restart)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.errors import SidecarConfigError

LOG_LEVELS = ("FATAL", "ERROR", "WARN", "INFO", "DEBUG", "TRACE")
MAX_LIMIT = 2147483647
MAX_WORKERS = 64


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    idle: float = 300.0
    drain: float = 15.0
    request_head: float = 60.0


@dataclass(frozen=True)
class AccessLog:
    path: str = ""
    max_bytes: int = 10 * 1024 * 1024
    backups: int = 3


@dataclass(frozen=True)
class SidecarConfig:
    inbound_port: int = 15006
    outbound_port: int = 15001
    bind: str = "::"
    admin_address: str = "127.0.0.1"
    admin_port: int = 15000
    workers: int = 1
    original_dst: str = "nat"
    inbound_source: str = "127.0.0.6"
    inbound_source6: str = "::6"
    limits: tuple[tuple[int, int], ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    access_log: AccessLog = field(default_factory=AccessLog)
    log_level: str = "INFO"
    state_dir: str = ""

    def limit_for(self, port: int) -> int:
        """Max concurrent requests for an app port; 0 means unlimited."""
        return dict(self.limits).get(port, 0)

    def to_document(self) -> dict[str, Any]:
        return {
            "inbound": {"port": self.inbound_port},
            "outbound": {"port": self.outbound_port},
            "bind": self.bind,
            "admin": {"address": self.admin_address, "port": self.admin_port},
            "workers": self.workers,
            "original_dst": self.original_dst,
            "inbound_source": self.inbound_source,
            "inbound_source6": self.inbound_source6,
            "limits": {str(p): n for p, n in self.limits},
            "timeouts": {
                "connect": self.timeouts.connect,
                "idle": self.timeouts.idle,
                "drain": self.timeouts.drain,
                "request_head": self.timeouts.request_head,
            },
            "access_log": {
                "path": self.access_log.path,
                "max_bytes": self.access_log.max_bytes,
                "backups": self.access_log.backups,
            },
            "log_level": self.log_level,
            "state_dir": self.state_dir,
        }

    @property
    def digest(self) -> str:
        text = json.dumps(self.to_document(), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def parse(cls, data: object) -> SidecarConfig:
        doc = _mapping(data, "config")
        _only(
            doc,
            "config",
            {
                "inbound",
                "outbound",
                "bind",
                "admin",
                "workers",
                "original_dst",
                "inbound_source",
                "inbound_source6",
                "limits",
                "timeouts",
                "access_log",
                "log_level",
                "state_dir",
            },
        )
        inbound = _mapping(doc.get("inbound", {}), "inbound")
        _only(inbound, "inbound", {"port"})
        outbound = _mapping(doc.get("outbound", {}), "outbound")
        _only(outbound, "outbound", {"port"})
        admin = _mapping(doc.get("admin", {}), "admin")
        _only(admin, "admin", {"address", "port"})
        timeouts = _mapping(doc.get("timeouts", {}), "timeouts")
        _only(timeouts, "timeouts", {"connect", "idle", "drain", "request_head"})
        access = _mapping(doc.get("access_log", {}), "access_log")
        _only(access, "access_log", {"path", "max_bytes", "backups"})
        limits_doc = _mapping(doc.get("limits", {}), "limits")
        limits = tuple(
            sorted(
                (_port(k, f"limits.{k}"), _int(v, f"limits.{k}", 0, MAX_LIMIT))
                for k, v in limits_doc.items()
            )
        )
        config = cls(
            inbound_port=_port(inbound.get("port", 15006), "inbound.port"),
            outbound_port=_port(outbound.get("port", 15001), "outbound.port"),
            bind=_address(doc.get("bind", "::"), "bind"),
            admin_address=_address(admin.get("address", "127.0.0.1"), "admin.address"),
            admin_port=_port(admin.get("port", 15000), "admin.port"),
            workers=_int(doc.get("workers", 1), "workers", 1, MAX_WORKERS),
            original_dst=_choice(doc.get("original_dst", "nat"), "original_dst", ("nat", "local")),
            inbound_source=_address(
                doc.get("inbound_source", "127.0.0.6"), "inbound_source", empty_ok=True
            ),
            inbound_source6=_address(
                doc.get("inbound_source6", "::6"), "inbound_source6", empty_ok=True
            ),
            limits=limits,
            timeouts=Timeouts(
                connect=_seconds(timeouts.get("connect", 5.0), "timeouts.connect"),
                idle=_seconds(timeouts.get("idle", 300.0), "timeouts.idle"),
                drain=_seconds(timeouts.get("drain", 15.0), "timeouts.drain"),
                request_head=_seconds(timeouts.get("request_head", 60.0), "timeouts.request_head"),
            ),
            access_log=AccessLog(
                path=_string(access.get("path", ""), "access_log.path"),
                max_bytes=_int(
                    access.get("max_bytes", 10 * 1024 * 1024), "access_log.max_bytes", 1024, 2**40
                ),
                backups=_int(access.get("backups", 3), "access_log.backups", 0, 100),
            ),
            log_level=parse_level(doc.get("log_level", "INFO"), "log_level"),
            state_dir=_string(doc.get("state_dir", ""), "state_dir"),
        )
        ports = [config.inbound_port, config.outbound_port, config.admin_port]
        if len(set(ports)) != len(ports):
            raise SidecarConfigError("admin.port", "inbound, outbound and admin ports must differ")
        return config


def load_sidecar_config(path: str | Path) -> SidecarConfig:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise SidecarConfigError("config", f"cannot read {file}: {exc.strerror}") from None
    if text.lstrip().startswith("{"):
        # JSON (what the agent writes) without importing yaml into the long-running process.
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SidecarConfigError("config", f"{file} is not valid JSON: {exc}") from None
        return SidecarConfig.parse(data)
    import yaml  # noqa: PLC0415

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SidecarConfigError("config", f"{file} is not valid YAML/JSON: {exc}") from None
    return SidecarConfig.parse({} if data is None else data)


def parse_level(value: object, name: str) -> str:
    text = str(value).upper() if isinstance(value, str) else ""
    if text == "WARNING":
        text = "WARN"
    if text not in LOG_LEVELS:
        raise SidecarConfigError(name, f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return text


def _mapping(value: object, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SidecarConfigError(name, f"expected a mapping, got {type(value).__name__}")
    return value


def _only(doc: Mapping[str, Any], name: str, allowed: set[str]) -> None:
    unknown = sorted(set(map(str, doc)) - allowed)
    if unknown:
        where = unknown[0] if name == "config" else f"{name}.{unknown[0]}"
        raise SidecarConfigError(where, f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _int(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise SidecarConfigError(name, f"expected an integer, got {value!r}")
    if isinstance(value, str):
        if not value.strip().isdigit():
            raise SidecarConfigError(name, f"expected an integer, got {value!r}")
        value = int(value)
    if not low <= value <= high:
        raise SidecarConfigError(name, f"{value} is outside [{low}, {high}]")
    return value


def _port(value: object, name: str) -> int:
    return _int(value, name, 1, 65535)


def _seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SidecarConfigError(name, f"expected seconds, got {value!r}")
    if not 0 < value <= 86400:
        raise SidecarConfigError(name, f"{value} is outside (0, 86400]")
    return float(value)


def _string(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise SidecarConfigError(name, f"expected a string, got {value!r}")
    return value


def _choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SidecarConfigError(name, f"expected one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _address(value: object, name: str, *, empty_ok: bool = False) -> str:
    import ipaddress  # noqa: PLC0415

    text = _string(value, name)
    if empty_ok and text == "":
        return text
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise SidecarConfigError(name, f"{text!r} is not an IP address") from None
