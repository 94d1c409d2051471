"""The interception config: parsed and validated at the edge, then frozen.

The file (YAML or JSON) has the same shape the console sends for a node. Every key is
optional; `{}` means all defaults. Keys:

    inbound:
      exclude_ports: []        # ports or ranges in [1025, 65535] never intercepted inbound
      redirect_port: 15006     # the sidecar's inbound listener
    outbound:
      exclude_cidrs: []        # destinations (v4 or v6 prefixes) that always go direct
      exclude_ports: []        # destination ports or ranges in [1025, 65535] that go direct
      redirect_port: 15001     # the sidecar's outbound listener
    proxy:
      user: sofamesh-proxy     # user (name or uid) the sidecar runs as; its traffic goes direct
      admin_port: 15000        # the sidecar's admin API, never intercepted
      ports: []                # further sidecar ports never intercepted
    console: []                # console addresses ("host:port" or URL), never intercepted
    ssh_ports: [22]            # SSH ports, never intercepted in either direction (R-SF-1)
    ipv6: auto                 # auto | true | false: intercept IPv6 with the same rules

Inbound, port 80 and every port above 1024 are intercepted (R-HJ-1); outbound, destination
port 80 and every port above 1024 (R-HJ-2). Nothing in the file can remove the built-in
exclusions (R-HJ-3): the proxy user's traffic, loopback destinations, the proxy's ports,
the console and SSH.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from hijack.errors import ConfigError
from hijack.values import (
    EXCLUDABLE_MIN,
    IPNetwork,
    PortRange,
    collapse,
    merge_ranges,
    parse_cidr,
    parse_port,
)

IPv6Mode = Literal["auto", "on", "off"]

DEFAULT_INBOUND_PORT = 15006
DEFAULT_OUTBOUND_PORT = 15001
DEFAULT_ADMIN_PORT = 15000
DEFAULT_PROXY_USER = "sofamesh-proxy"
DEFAULT_SSH_PORTS = (22,)
MAX_LISTED_PORTS = 8
# What R-HJ-1/2 intercept: port 80 and everything above 1024.
INTERCEPTED_PORTS = (PortRange(80, 80), PortRange(1025, 65535))


@dataclass(frozen=True)
class ConsoleEndpoint:
    """The console's host (name or IP, resolved later) and TCP port."""

    host: str
    port: int

    @classmethod
    def parse(cls, value: object, field_name: str) -> ConsoleEndpoint:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(field_name, f"expected 'host:port' or a URL, got {value!r}")
        text = value.strip()
        parts = urlsplit(text if "://" in text else f"tcp://{text}")
        default = {"https": 443, "http": 80}.get(parts.scheme)
        try:
            port = parts.port or default
        except ValueError:
            raise ConfigError(field_name, f"{value!r} has an invalid port") from None
        if not parts.hostname or port is None:
            raise ConfigError(field_name, f"{value!r} needs a host and a port")
        return cls(parts.hostname, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class HijackConfig:
    """What to intercept. Validated on construction through `parse`; never mutated."""

    inbound_exclude_ports: tuple[PortRange, ...] = ()
    inbound_redirect_port: int = DEFAULT_INBOUND_PORT
    outbound_exclude_cidrs4: tuple[IPNetwork, ...] = ()
    outbound_exclude_cidrs6: tuple[IPNetwork, ...] = ()
    outbound_exclude_ports: tuple[PortRange, ...] = ()
    outbound_redirect_port: int = DEFAULT_OUTBOUND_PORT
    proxy_user: str | int = DEFAULT_PROXY_USER
    proxy_admin_port: int = DEFAULT_ADMIN_PORT
    proxy_extra_ports: tuple[int, ...] = ()
    console: tuple[ConsoleEndpoint, ...] = ()
    ssh_ports: tuple[int, ...] = DEFAULT_SSH_PORTS
    ipv6: IPv6Mode = "auto"
    # Kept for messages: which keys the operator actually wrote.
    source: str = field(default="defaults", compare=False)

    @property
    def proxy_ports(self) -> tuple[int, ...]:
        """Every port the sidecar owns; never intercepted (R-HJ-3)."""
        ports = {self.inbound_redirect_port, self.outbound_redirect_port, self.proxy_admin_port}
        return tuple(sorted(ports | set(self.proxy_extra_ports)))

    @classmethod
    def parse(cls, data: object, *, source: str = "config") -> HijackConfig:
        """Validate a decoded document; raises ConfigError naming the first bad field."""
        doc = _mapping(data, "config")
        _only(doc, "config", {"inbound", "outbound", "proxy", "console", "ssh_ports", "ipv6"})
        inbound = _mapping(doc.get("inbound", {}), "inbound")
        _only(inbound, "inbound", {"exclude_ports", "redirect_port"})
        outbound = _mapping(doc.get("outbound", {}), "outbound")
        _only(outbound, "outbound", {"exclude_cidrs", "exclude_ports", "redirect_port"})
        proxy = _mapping(doc.get("proxy", {}), "proxy")
        _only(proxy, "proxy", {"user", "admin_port", "ports"})

        cidrs = [
            parse_cidr(v, f"outbound.exclude_cidrs[{i}]")
            for i, v in enumerate(
                _list(outbound.get("exclude_cidrs", []), "outbound.exclude_cidrs")
            )
        ]
        cidrs4, cidrs6 = collapse(cidrs)
        config = cls(
            inbound_exclude_ports=_excluded_ports(inbound, "inbound.exclude_ports"),
            inbound_redirect_port=parse_port(
                inbound.get("redirect_port", DEFAULT_INBOUND_PORT), "inbound.redirect_port"
            ),
            outbound_exclude_cidrs4=cidrs4,
            outbound_exclude_cidrs6=cidrs6,
            outbound_exclude_ports=_excluded_ports(outbound, "outbound.exclude_ports"),
            outbound_redirect_port=parse_port(
                outbound.get("redirect_port", DEFAULT_OUTBOUND_PORT), "outbound.redirect_port"
            ),
            proxy_user=_user(proxy.get("user", DEFAULT_PROXY_USER), "proxy.user"),
            proxy_admin_port=parse_port(
                proxy.get("admin_port", DEFAULT_ADMIN_PORT), "proxy.admin_port"
            ),
            proxy_extra_ports=tuple(
                sorted(
                    {
                        parse_port(v, f"proxy.ports[{i}]")
                        for i, v in enumerate(_list(proxy.get("ports", []), "proxy.ports"))
                    }
                )
            ),
            console=tuple(
                ConsoleEndpoint.parse(v, f"console[{i}]")
                for i, v in enumerate(_list(doc.get("console", []), "console", scalar_ok=True))
            ),
            ssh_ports=tuple(
                sorted(
                    {
                        parse_port(v, f"ssh_ports[{i}]")
                        for i, v in enumerate(_list(doc.get("ssh_ports", [22]), "ssh_ports"))
                    }
                )
            ),
            ipv6=_ipv6_mode(doc.get("ipv6", "auto")),
            source=source,
        )
        # iptables' multiport match takes at most 15 ports; these lists share one rule each.
        if len(config.proxy_extra_ports) > MAX_LISTED_PORTS:
            raise ConfigError("proxy.ports", f"at most {MAX_LISTED_PORTS} extra ports")
        if len(config.ssh_ports) > MAX_LISTED_PORTS:
            raise ConfigError("ssh_ports", f"at most {MAX_LISTED_PORTS} SSH ports")
        if config.inbound_redirect_port == config.outbound_redirect_port:
            raise ConfigError("outbound.redirect_port", "must differ from inbound.redirect_port")
        if config.proxy_admin_port in (config.inbound_redirect_port, config.outbound_redirect_port):
            raise ConfigError("proxy.admin_port", "must differ from the redirect ports")
        return config

    def to_document(self) -> dict[str, Any]:
        """The canonical document form (what the console sends, with defaults filled in)."""
        return {
            "inbound": {
                "exclude_ports": [str(r) for r in self.inbound_exclude_ports],
                "redirect_port": self.inbound_redirect_port,
            },
            "outbound": {
                "exclude_cidrs": [
                    str(n) for n in (*self.outbound_exclude_cidrs4, *self.outbound_exclude_cidrs6)
                ],
                "exclude_ports": [str(r) for r in self.outbound_exclude_ports],
                "redirect_port": self.outbound_redirect_port,
            },
            "proxy": {
                "user": self.proxy_user,
                "admin_port": self.proxy_admin_port,
                "ports": list(self.proxy_extra_ports),
            },
            "console": [str(c) for c in self.console],
            "ssh_ports": list(self.ssh_ports),
            "ipv6": {"on": True, "off": False}.get(self.ipv6, "auto"),
        }


def load_config(path: str | Path) -> HijackConfig:
    """Read a YAML or JSON file (JSON is YAML, but JSON errors read better from json)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("config", f"cannot read {file}: {exc.strerror}") from None
    try:
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            "config", f"{file} is not valid {file.suffix.lstrip('.') or 'YAML'}: {exc}"
        ) from None
    return HijackConfig.parse({} if data is None else data, source=str(file))


def _mapping(value: object, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(name, f"expected a mapping, got {type(value).__name__}")
    return value


def _only(doc: Mapping[str, Any], name: str, allowed: set[str]) -> None:
    unknown = sorted(set(map(str, doc)) - allowed)
    if unknown:
        where = f"{name}.{unknown[0]}" if name != "config" else unknown[0]
        raise ConfigError(where, f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _list(value: object, name: str, *, scalar_ok: bool = False) -> list[Any]:
    if scalar_ok and isinstance(value, str):
        return [value]
    if not isinstance(value, list | tuple):
        raise ConfigError(name, f"expected a list, got {type(value).__name__}")
    return list(value)


def _excluded_ports(section: Mapping[str, Any], name: str) -> tuple[PortRange, ...]:
    return merge_ranges(
        PortRange.parse(v, f"{name}[{i}]", minimum=EXCLUDABLE_MIN)
        for i, v in enumerate(_list(section.get("exclude_ports", []), name))
    )


def _user(value: object, name: str) -> str | int:
    if isinstance(value, bool):
        raise ConfigError(name, f"expected a user name or uid, got {value!r}")
    if isinstance(value, int):
        if not 0 < value < 2**32 - 1:
            raise ConfigError(name, f"uid {value} is out of range (root cannot be the proxy)")
        return value
    if isinstance(value, str) and value.isdigit():
        return _user(int(value), name)
    if isinstance(value, str) and value and all(c.isalnum() or c in "-_." for c in value):
        if value == "root":
            raise ConfigError(
                name, "the proxy must not run as root: its traffic is never intercepted"
            )
        return value
    raise ConfigError(name, f"{value!r} is not a valid user name or uid")


def _ipv6_mode(value: object) -> IPv6Mode:
    if value is True or value in ("on", "true"):
        return "on"
    if value is False or value in ("off", "false"):
        return "off"
    if value == "auto":
        return "auto"
    raise ConfigError("ipv6", f"expected auto, true or false, got {value!r}")
