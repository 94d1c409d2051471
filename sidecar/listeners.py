"""The listening sockets: created once, shared by every worker, passed on hot restart."""

from __future__ import annotations

import ipaddress
import socket

from sidecar.config import SidecarConfig
from sidecar.errors import SidecarError

BACKLOG = 4096


class Ipv6Unavailable(SidecarError):
    """The host has no IPv6."""


def open_listeners(config: SidecarConfig) -> list[tuple[str, socket.socket]]:
    """(direction, socket) for inbound and outbound, IPv4 and IPv6 sockets apart.

    Separate sockets per family keep SO_ORIGINAL_DST simple (no v4-mapped addresses)."""
    out: list[tuple[str, socket.socket]] = []
    for direction, port in (("inbound", config.inbound_port), ("outbound", config.outbound_port)):
        for address in _addresses(config.bind):
            try:
                out.append((direction, _listen(address, port)))
            except Ipv6Unavailable:
                if config.bind != "::":
                    raise  # asked for IPv6 explicitly: say so; with "::", IPv4 alone is fine
    return out


def open_admin(config: SidecarConfig) -> socket.socket:
    return _listen(config.admin_address, config.admin_port)


def _addresses(bind: str) -> list[str]:
    if bind == "::":
        return ["0.0.0.0", "::"]
    return [bind]


def _listen(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if family == socket.AF_INET6 and exc.errno in (97, 99):  # no IPv6 on this host
            raise Ipv6Unavailable(f"cannot listen on [{address}]:{port}: {exc.strerror}") from None
        raise SidecarError(f"cannot listen on {address}:{port}: {exc.strerror}") from None
    return sock
