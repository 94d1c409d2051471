"""A tiny TCP probe run inside lab VMs to see where (intercepted) connections land.

    python -m netlab.probe listen --port P [--host ADDR] [--name NAME] [--family 4|6|both]
    python -m netlab.probe forward --port P [--source ADDR] [--name NAME] [--host ADDR]
    python -m netlab.probe connect HOST PORT [--timeout S] [--source ADDR] [--send TEXT]

`listen` answers each connection with one JSON line {name, listener_port, local, peer,
orig_dst, uid} and prints the same line to its own stdout; `forward` is a minimal
transparent proxy to each connection's original destination and logs one line per
connection; `connect` prints what it got, or {"error": "refused"|"reset"|"timeout"|
"empty"|...} and exits 3. Addresses print as "ip:port", IPv6 ones as "[ip]:port".

orig_dst is what conntrack says the client dialed: null when the namespace keeps no
conntrack entry for the connection (no NAT there), equal to `local` when conntrack runs
but the connection was not redirected.

Standard library only, so it runs under any Python as a plain file (`python -P probe.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

SOL_IP = 0
SOL_IPV6 = 41
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h
EXIT_FAILED = 3
MAX_READ = 64 * 1024
IO_TIMEOUT = 10.0

Handler = Callable[[socket.socket, int], None]
_out_lock = threading.Lock()


def original_dst(sock: socket.socket) -> tuple[str, int] | None:
    """Where a NATed (REDIRECTed) connection was going, or None when it was not NATed."""
    if sock.family == socket.AF_INET6:
        try:
            raw = sock.getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST, 28)  # sockaddr_in6
        except OSError:
            if not _v4_mapped(sock.getpeername()[0]):
                return None
        else:
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), _port(raw)
    try:
        raw = sock.getsockopt(SOL_IP, SO_ORIGINAL_DST, 16)  # sockaddr_in
    except OSError:
        return None
    return socket.inet_ntop(socket.AF_INET, raw[4:8]), _port(raw)


def hostport(addr: tuple[Any, ...]) -> str:
    """ "ip:port" for a socket address; "[ip]:port" for IPv6; v4-mapped shown as IPv4."""
    host, port = str(addr[0]), int(addr[1])
    if _v4_mapped(host):
        host = host.removeprefix("::ffff:")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_hostport(text: str) -> tuple[str, int]:
    """Inverse of `hostport`: "[2001:db8::2]:80" -> ("2001:db8::2", 80)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def emit(record: dict[str, Any]) -> str:
    """Print one JSON line to stdout at once (threads share it) and return the line."""
    line = json.dumps(record) + "\n"
    with _out_lock, contextlib.suppress(OSError):
        sys.stdout.write(line)
        sys.stdout.flush()
    return line


def open_listeners(port: int, host: str | None, family: str | None) -> list[socket.socket]:
    """Listening sockets: on `host` (its family), else wildcards for family 4, 6 or both."""
    if host is not None:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        return [_listener(fam, host, port, v6only=family != "both")]
    family = family or "both"
    socks = []
    if family in ("4", "both"):
        socks.append(_listener(socket.AF_INET, "0.0.0.0", port, v6only=True))
    if family in ("6", "both"):
        socks.append(_listener(socket.AF_INET6, "::", port, v6only=True))
    return socks


def serve(listeners: Sequence[socket.socket], port: int, handler: Handler) -> None:
    """Accept on `listeners` until SIGTERM/SIGINT; each connection gets its own thread."""
    wake_r, wake_w = socket.socketpair()
    wake_w.setblocking(False)
    previous_fd = signal.set_wakeup_fd(wake_w.fileno())
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(wake_r, selectors.EVENT_READ, None)
            for sock in listeners:
                sel.register(sock, selectors.EVENT_READ, sock)
            while True:
                for key, _ in sel.select():
                    if key.data is None:  # the wakeup socket: a signal arrived
                        return
                    conn = _accept(key.data)
                    if conn is not None:
                        threading.Thread(target=handler, args=(conn, port), daemon=True).start()
    finally:
        signal.set_wakeup_fd(previous_fd)
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        for sock in (*listeners, wake_r, wake_w):
            sock.close()


def answer(name: str) -> Handler:
    """Handler of `listen`: tell the client where it landed, then close."""

    def handle(conn: socket.socket, port: int) -> None:
        with conn, contextlib.suppress(OSError):  # OSError: the client is already gone
            line = emit(_landing(conn, name, port, original_dst(conn)) | {"uid": os.getuid()})
            conn.settimeout(IO_TIMEOUT)
            conn.sendall(line.encode())
            conn.shutdown(socket.SHUT_WR)
            # Read to the client's EOF: closing with unread data would send a reset.
            while conn.recv(MAX_READ):
                pass

    return handle


def forwarder(name: str, source: str | None) -> Handler:
    """Handler of `forward`: connect to the original destination and pipe both ways."""

    def handle(conn: socket.socket, port: int) -> None:
        with conn, contextlib.suppress(OSError):
            orig = original_dst(conn)
            record = _landing(conn, name, port, orig)
            if orig is None:
                emit(record | {"error": "no original destination"})
                return
            fam = socket.AF_INET6 if ":" in orig[0] else socket.AF_INET
            with socket.socket(fam, socket.SOCK_STREAM) as upstream:
                try:
                    if source is not None and (":" in source) == (fam == socket.AF_INET6):
                        upstream.bind((source, 0))
                    upstream.settimeout(IO_TIMEOUT)
                    upstream.connect(orig)
                    upstream.settimeout(None)
                except OSError as exc:
                    emit(record | {"error": f"upstream: {exc}"})
                    return
                emit(record | {"upstream_local": hostport(upstream.getsockname())})
                back = threading.Thread(target=_pipe, args=(upstream, conn), daemon=True)
                back.start()
                _pipe(conn, upstream)
                back.join()

    return handle


def connect(
    host: str, port: int, *, timeout: float, source: str | None, send: str | None
) -> tuple[int, str]:
    """Connect, optionally send, read to EOF; return (exit status, text to print)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    data = b""
    try:
        with socket.socket(fam, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            if source is not None:
                sock.bind((source, 0))
            sock.connect((host, port))
            if send is not None:
                sock.sendall(send.encode())
            while len(data) < MAX_READ and (chunk := sock.recv(MAX_READ - len(data))):
                data += chunk
    except ConnectionRefusedError:
        return EXIT_FAILED, json.dumps({"error": "refused"})
    except ConnectionResetError:
        return EXIT_FAILED, json.dumps({"error": "reset"})
    except TimeoutError:
        return EXIT_FAILED, json.dumps({"error": "timeout"})
    except OSError as exc:
        return EXIT_FAILED, json.dumps({"error": str(exc)})
    if not data:
        return EXIT_FAILED, json.dumps({"error": "empty"})
    return 0, data.decode(errors="replace").rstrip("\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "connect":
        status, text = connect(
            args.host, args.port, timeout=args.timeout, source=args.source, send=args.send
        )
        print(text, flush=True)
        return status
    listeners = open_listeners(args.port, args.host, args.family)
    name = args.name or f"{args.command}:{args.port}"
    if args.command == "listen":
        serve(listeners, args.port, answer(name))
    else:
        serve(listeners, args.port, forwarder(name, args.source))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m netlab.probe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("listen", "forward"):
        p = sub.add_parser(command)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--host", help="address to bind (default: wildcards of --family)")
        p.add_argument("--name", help="name reported in each JSON line")
        p.add_argument("--family", choices=("4", "6", "both"))
        if command == "forward":
            p.add_argument("--source", help="bind upstream connections to this address")
    p = sub.add_parser("connect")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--source", help="bind to this address before connecting")
    p.add_argument("--send", help="text to send after connecting")
    return parser


def _landing(
    conn: socket.socket, name: str, port: int, orig: tuple[str, int] | None
) -> dict[str, Any]:
    return {
        "name": name,
        "listener_port": port,
        "local": hostport(conn.getsockname()),
        "peer": hostport(conn.getpeername()),
        "orig_dst": hostport(orig) if orig is not None else None,
    }


def _listener(fam: socket.AddressFamily, host: str, port: int, *, v6only: bool) -> socket.socket:
    sock = socket.socket(fam, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _accept(listener: socket.socket) -> socket.socket | None:
    try:
        conn, _ = listener.accept()
    except OSError:  # the client gave up between select and accept
        return None
    return conn


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(MAX_READ):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _port(raw: bytes) -> int:
    port: int = struct.unpack_from("!H", raw, 2)[0]
    return port


def _v4_mapped(host: str) -> bool:
    return host.lower().startswith("::ffff:") and "." in host


def _ignore(signum: int, frame: object) -> None:
    """SIGTERM/SIGINT only wake the accept loop (through the wakeup fd) to exit cleanly."""


if __name__ == "__main__":
    sys.exit(main())
