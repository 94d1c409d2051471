"""Hot restart: a new sidecar takes over the listening sockets of the running one (R-SC-5).

As MOSN does: the running sidecar listens on `<state_dir>/sidecar.sock`; the new one
connects, says "takeover", and receives the listening sockets (SCM_RIGHTS) with the old
counters. Both serve for a moment; the old one drains, sends its final counters, and exits.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.errors import HotRestartError

SOCKET_NAME = "sidecar.sock"
MAX_HEADER = 4 * 1024 * 1024
MAX_FDS = 16


def socket_path(state_dir: str) -> Path:
    return Path(state_dir) / SOCKET_NAME


@dataclass
class TakenOver:
    listeners: list[tuple[str, socket.socket]]
    admin: socket.socket
    stats: list[dict[str, Any]]
    old_pid: int
    channel: socket.socket  # stays open: the old process sends its final counters here


def take_over(state_dir: str, timeout: float = 10.0) -> TakenOver:
    """Client side, run by the new process before it serves."""
    path = socket_path(state_dir)
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    channel.settimeout(timeout)
    try:
        channel.connect(str(path))
        channel.sendall(b"takeover\n")
        header, fds, _, _ = socket.recv_fds(channel, MAX_HEADER, MAX_FDS)
    except OSError as exc:
        channel.close()
        raise HotRestartError(f"cannot take over from {path}: {exc.strerror or exc}") from None
    try:
        doc = json.loads(header)
    except ValueError:
        for fd in fds:
            os.close(fd)
        channel.close()
        raise HotRestartError("the running sidecar sent an unreadable hand-over") from None
    socks = [socket.socket(fileno=fd) for fd in fds]
    for sock in socks:
        sock.setblocking(False)
    directions: list[str] = doc["listeners"]
    return TakenOver(
        listeners=list(zip(directions, socks[: len(directions)], strict=True)),
        admin=socks[len(directions)],
        stats=doc["stats"],
        old_pid=int(doc["pid"]),
        channel=channel,
    )


def read_final_stats(channel: socket.socket, timeout: float) -> list[dict[str, Any]] | None:
    """Blocking read of the old process's last counters (run in a thread)."""
    channel.settimeout(timeout)
    data = b""
    try:
        while not data.endswith(b"\n"):
            chunk = channel.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        return None
    finally:
        channel.close()
    try:
        stats: list[dict[str, Any]] = json.loads(data)["final_stats"]
    except (ValueError, KeyError):
        return None
    return stats


class HandOver:
    """Server side, in the running sidecar."""

    def __init__(self, state_dir: str) -> None:
        self.path = socket_path(state_dir)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        os.chmod(self.path, 0o600)  # only the proxy user (and root) may take over
        self.sock.listen(1)
        self.sock.setblocking(False)
        self.channel: socket.socket | None = None

    def accept(
        self,
        listeners: list[tuple[str, socket.socket]],
        admin: socket.socket,
        stats: Callable[[], list[dict[str, Any]]],
    ) -> bool:
        """Answer one takeover request; True when the sockets were handed over."""
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return False
        conn.settimeout(5.0)
        try:
            if conn.recv(64).strip() != b"takeover":
                conn.close()
                return False
            header = json.dumps(
                {"listeners": [d for d, _ in listeners], "stats": stats(), "pid": os.getpid()}
            ).encode()
            socket.send_fds(conn, [header], [s.fileno() for _, s in listeners] + [admin.fileno()])
        except OSError:
            conn.close()
            return False
        self.channel = conn
        return True

    def send_final(self, stats: list[dict[str, Any]]) -> None:
        if self.channel is None:
            return
        try:
            self.channel.sendall(json.dumps({"final_stats": stats}).encode() + b"\n")
        except OSError:
            pass
        finally:
            self.channel.close()

    def close(self) -> None:
        self.sock.close()
        if self.channel is None:
            # Only the owner of the path removes it; after a hand-over it is the new one's.
            self.path.unlink(missing_ok=True)
