"""Second phase of the config: probe the host and pin down what the rules need.

Only a ResolvedConfig reaches the rule builder. Resolution never changes the host.
"""

from __future__ import annotations

import ipaddress
import pwd
import socket
from dataclasses import dataclass
from pathlib import Path

from hijack.config import HijackConfig
from hijack.errors import ConfigError
from hijack.values import IPNetwork

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class ConsoleTarget:
    """One resolved console address that outbound rules must leave alone."""

    address: Address
    port: int


@dataclass(frozen=True)
class ResolvedConfig:
    """A HijackConfig plus the host facts the rules depend on."""

    config: HijackConfig
    # None when the user does not exist yet (dry-run before install): rules then name the user.
    proxy_uid: int | None
    proxy_user_label: str
    console: tuple[ConsoleTarget, ...]
    ipv6: bool
    # Why IPv6 is or is not intercepted; reported so it is never silently half-done (R-HJ-9).
    ipv6_reason: str

    def cidrs(self, family: int) -> tuple[IPNetwork, ...]:
        c = self.config
        return c.outbound_exclude_cidrs4 if family == 4 else c.outbound_exclude_cidrs6

    def console_targets(self, family: int) -> tuple[ConsoleTarget, ...]:
        return tuple(t for t in self.console if t.address.version == family)


def host_has_ipv6() -> bool:
    """True when this network namespace has IPv6 (the kernel lists if_inet6 entries)."""
    path = Path("/proc/net/if_inet6")
    try:
        return path.exists() and bool(path.read_text().strip())
    except OSError:
        return False


def resolve(config: HijackConfig, *, require_user: bool = True) -> ResolvedConfig:
    """Probe the host; with require_user=False an unknown proxy user is kept by name."""
    uid, label = _proxy_uid(config.proxy_user, require=require_user)
    has_v6 = host_has_ipv6()
    if config.ipv6 == "off":
        ipv6, reason = False, "disabled by config (ipv6: false): IPv6 traffic is NOT intercepted"
    elif has_v6:
        ipv6, reason = True, "intercepted with the same rules as IPv4"
    elif config.ipv6 == "on":
        raise ConfigError("ipv6", "IPv6 interception was requested but this host has no IPv6")
    else:
        ipv6, reason = False, "host has no IPv6 configured: nothing to intercept"
    console = tuple(
        ConsoleTarget(addr, endpoint.port)
        for endpoint in config.console
        for addr in _addresses(endpoint.host, f"console ({endpoint})")
    )
    return ResolvedConfig(config, uid, label, console, ipv6, reason)


def _proxy_uid(user: str | int, *, require: bool) -> tuple[int | None, str]:
    if isinstance(user, int):
        return user, str(user)
    try:
        return pwd.getpwnam(user).pw_uid, user
    except KeyError:
        if require:
            raise ConfigError(
                "proxy.user", f"user {user!r} does not exist (the install creates it)"
            ) from None
        return None, user


def _addresses(host: str, field: str) -> list[Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ConfigError(field, f"cannot resolve {host!r}: {exc.strerror}") from None
    return sorted({ipaddress.ip_address(info[4][0]) for info in infos}, key=str)
