"""Where an accepted connection was going before the kernel steered it to us (R-SC-1).

One small interface for every backend: NAT backends (iptables, nftables) answer through
SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST; backends that steer without NAT (eBPF sk_lookup)
leave the original destination as the accepted socket's own address ("local").
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Literal

SOL_IP = 0
SOL_IPV6 = 41
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h

Mode = Literal["nat", "local"]
Destination = tuple[str, int]


def original_destination(sock: socket.socket, mode: Mode) -> Destination | None:
    """(address, port) the peer dialled; IPv4-mapped IPv6 addresses come back as IPv4."""
    if mode == "local":
        host, port = sock.getsockname()[:2]
        return _unmap(host), port
    if sock.family == socket.AF_INET6:
        # An IPv4 connection on a dual-stack socket still has its NAT entry in IPv4.
        peer = sock.getpeername()[0]
        if ipaddress.ip_address(peer.split("%")[0]).version == 6 and not peer.startswith("::ffff:"):
            return _v6(sock)
    return _v4(sock)


def _v4(sock: socket.socket) -> Destination | None:
    try:
        raw = sock.getsockopt(SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntop(socket.AF_INET, packed), port


def _v6(sock: socket.socket) -> Destination | None:
    try:
        raw = sock.getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST, 28)
    except OSError:
        return None
    port, packed = struct.unpack_from("!2xH4x16s", raw)
    return socket.inet_ntop(socket.AF_INET6, packed), port


def _unmap(host: str) -> str:
    return host[7:] if host.startswith("::ffff:") and "." in host else host
