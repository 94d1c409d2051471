"""Find the sidecar's listening sockets in this network namespace and borrow their fds.

sk_lookup steers a connection to a socket taken from a SOCKMAP; the backend puts the
sidecar's inbound listening sockets there. It finds them as the kernel lists them
(/proc/net/tcp{,6}: listening state, the port, the socket inode), finds a process holding
that inode, and duplicates the descriptor with pidfd_getfd(2) - the sidecar needs no change
and no cooperation. When the sidecar closes a socket, the kernel drops it from the map.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from hijack.backends.ebpf_sys import pidfd_getfd

LISTEN = "0A"


@dataclass(frozen=True)
class Listener:
    family: socket.AddressFamily
    inode: int


def listeners(port: int, proc: Path = Path("/proc")) -> list[Listener]:
    """Listening TCP sockets on `port` in the calling process's network namespace."""
    found = []
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = (proc / "self/net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            listening = len(fields) > 9 and fields[3] == LISTEN
            if listening and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.append(Listener(family, int(fields[9])))
    return found


def _holder(inode: int, proc: Path) -> tuple[int, int] | None:
    """(pid, fd) of some process that holds socket `inode`."""
    target = f"socket:[{inode}]"
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == target:
                        return int(entry.name), int(fd.name)
    return None


@dataclass(frozen=True)
class Borrowed:
    """A duplicate fd of a listening socket (close it after use) and the map slot it
    serves: 0 takes IPv4 connections, 1 IPv6."""

    fd: int
    slot: int


def borrow(port: int, proc: Path = Path("/proc")) -> tuple[list[Borrowed], list[int]]:
    """Duplicates of the listening sockets on `port`, one per map slot at most, and every
    fd opened on the way (the caller closes those once the map holds the sockets)."""
    by_slot: dict[int, Borrowed] = {}
    opened: list[int] = []
    for listener in listeners(port, proc):
        held = _holder(listener.inode, proc)
        if held is None:
            continue
        fd = pidfd_getfd(*held)
        opened.append(fd)
        slots: tuple[int, ...] = (0,)
        if listener.family == socket.AF_INET6:
            with socket.socket(fileno=os.dup(fd)) as sock:
                v6only = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
            # A dual-stack socket takes IPv4 too, unless an IPv4 socket is there for it.
            slots = (1,) if v6only else (1, 0)
        for slot in slots:
            if slot not in by_slot or listener.family == socket.AF_INET:
                by_slot[slot] = Borrowed(fd, slot)
    return sorted(by_slot.values(), key=lambda b: b.slot), opened
