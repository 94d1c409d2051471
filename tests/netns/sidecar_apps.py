"""Small apps and clients that the sidecar tests run inside lab VMs (standard library only).

    python -P sidecar_apps.py echo --port P        POST: {"length", "sha256", "chunked"} of
                                                   the body (Content-Length or chunked, after
                                                   `Expect: 100-continue`); GET /peer: {"peer"}
    python -P sidecar_apps.py hold --port P        GET /hold waits until GET /_release;
                                                   GET /fast answers at once; GET /_stats,
                                                   GET /_reset (in flight, max in flight)
    python -P sidecar_apps.py ws-echo --port P     WebSocket echo (RFC 6455)
    python -P sidecar_apps.py tcp-echo --port P    echoes bytes back (not HTTP)
    python -P sidecar_apps.py banner --port P      speaks first (BANNER), then echoes

    python -P sidecar_apps.py raw HOST PORT --send FILE [--out FILE] [--read-bytes N]
    python -P sidecar_apps.py requests HOST PORT PATH...
    python -P sidecar_apps.py burst HOST PORT PATH --count N --out FILE
    python -P sidecar_apps.py session HOST PORT
    python -P sidecar_apps.py ws HOST PORT --message TEXT... [--binary-size N]

Servers take IPv4 and IPv6 on one socket. Clients print one JSON line (burst: one line per
response to --out, as each arrives; session: one line per request line read from stdin).
Every blocking call has a timeout, so a client always ends with an answer.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import socket
import socketserver
import struct
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

IO_TIMEOUT = 30.0
HOLD_LIMIT = 120.0  # a held request is answered 504 after this, so nothing waits forever
BANNER = b"220 server speaks first\r\n"  # as SMTP, FTP and MySQL do
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CHUNK = 64 * 1024


class Reader(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...
    def readline(self, size: int = ..., /) -> bytes: ...


class DualStackHTTPServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    request_queue_size = 128
    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class DualStackTCPServer(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    request_queue_size = 128
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and `Expect: 100-continue` is honoured

    def reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def reply_json(self, status: int, doc: dict[str, Any]) -> None:
        self.reply(status, json.dumps(doc).encode() + b"\n", "application/json")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read answers, not logs."""


class EchoHandler(Handler):
    def do_GET(self) -> None:
        if self.path == "/peer":
            self.reply_json(200, {"peer": unmapped(self.client_address[0])})
        else:
            self.reply(404, b"not found\n")

    def do_POST(self) -> None:
        digest = hashlib.sha256()
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        length = 0
        for part in read_chunked(self.rfile) if chunked else read_sized(self.rfile, self):
            digest.update(part)
            length += len(part)
        self.reply_json(200, {"length": length, "sha256": digest.hexdigest(), "chunked": chunked})


class HoldState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        self.held = 0
        self.fast = 0

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "held": self.held,
                "fast": self.fast,
            }

    def reset(self) -> None:
        with self.lock:
            self.release.clear()
            self.max_in_flight = self.in_flight
            self.held = self.fast = 0


HOLD = HoldState()


class HoldHandler(Handler):
    def do_GET(self) -> None:
        if self.path == "/hold":
            with HOLD.lock:
                HOLD.in_flight += 1
                HOLD.held += 1
                HOLD.max_in_flight = max(HOLD.max_in_flight, HOLD.in_flight)
            released = HOLD.release.wait(HOLD_LIMIT)
            with HOLD.lock:
                HOLD.in_flight -= 1
            self.reply(200 if released else 504, b"released\n" if released else b"held too long\n")
        elif self.path == "/fast":
            with HOLD.lock:
                HOLD.fast += 1
            self.reply(200, b"fast\n")
        elif self.path == "/_stats":
            self.reply_json(200, HOLD.snapshot())
        elif self.path == "/_release":
            HOLD.release.set()
            self.reply_json(200, HOLD.snapshot())
        elif self.path == "/_reset":
            HOLD.reset()
            self.reply_json(200, HOLD.snapshot())
        else:
            self.reply(404, b"not found\n")


class WebSocketEcho(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(IO_TIMEOUT)
        head = read_head(self.rfile)
        key = head["headers"].get("sec-websocket-key", "")
        if head["headers"].get("upgrade", "").lower() != "websocket" or not key:
            self.wfile.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return
        self.wfile.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + ws_accept(key).encode() + b"\r\n\r\n"
        )
        while True:
            opcode, payload = ws_read_frame(self.rfile)
            if opcode == 0x9:  # ping
                self.wfile.write(ws_frame(0xA, payload, mask=False))
                continue
            self.wfile.write(ws_frame(opcode, payload, mask=False))
            if opcode == 0x8:  # close: echoed, done
                return


class TcpEcho(socketserver.BaseRequestHandler):
    banner = b""

    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(IO_TIMEOUT)
        with contextlib.suppress(OSError):
            conn.sendall(self.banner)
        with contextlib.suppress(OSError):
            while data := conn.recv(CHUNK):
                conn.sendall(data)


class BannerEcho(TcpEcho):
    banner = BANNER


# --- HTTP/1.1 and WebSocket wire helpers -------------------------------------------------


def unmapped(host: str) -> str:
    return host.removeprefix("::ffff:") if "." in host else host


def read_sized(rfile: Reader, handler: BaseHTTPRequestHandler) -> list[bytes]:
    left = int(handler.headers.get("Content-Length", "0"))
    parts = []
    while left > 0:
        part = rfile.read(min(CHUNK, left))
        if not part:
            raise ConnectionError("body ended early")
        parts.append(part)
        left -= len(part)
    return parts


def read_chunked(rfile: Reader) -> list[bytes]:
    """The decoded chunks of a chunked body (trailers skipped)."""
    parts: list[bytes] = []
    while True:
        size = int(rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                pass
            return parts
        parts.append(read_exact(rfile, size))
        read_exact(rfile, 2)


def read_exact(rfile: Reader, size: int) -> bytes:
    data = rfile.read(size)
    if len(data) != size:
        raise ConnectionError(f"wanted {size} bytes, got {len(data)}")
    return data


def read_head(rfile: Reader) -> dict[str, Any]:
    """A request or response head: first line and lower-cased headers (raw bytes too)."""
    raw = b""
    first = rfile.readline(8192)
    if not first:
        raise ConnectionError("closed before a head")
    raw += first
    headers: dict[str, str] = {}
    while True:
        line = rfile.readline(8192)
        if not line:
            raise ConnectionError("closed inside a head")
        raw += line
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return {"first": first.decode("latin-1").strip(), "headers": headers, "raw": raw}


def read_response(rfile: Reader, *, method: str = "GET") -> dict[str, Any]:
    """One final response (1xx ones skipped but counted): status, headers, body."""
    informational = []
    while True:
        head = read_head(rfile)
        status = int(head["first"].split()[1])
        if status >= 200 or status == 101:
            break
        informational.append(status)
    headers = head["headers"]
    if method == "HEAD" or status in (101, 204, 304):
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body = b"".join(read_chunked(rfile))
    elif "content-length" in headers:
        body = read_exact(rfile, int(headers["content-length"]))
    else:
        body = rfile.read()
    return {
        "status": status,
        "headers": headers,
        "body": body.decode("utf-8", "replace"),
        "informational": informational,
    }


def ws_accept(key: str) -> str:
    digest = hashlib.sha1((key + WS_GUID).encode(), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode()


def ws_frame(opcode: int, payload: bytes, *, mask: bool) -> bytes:
    head = bytes([0x80 | opcode])
    bit = 0x80 if mask else 0
    size = len(payload)
    if size < 126:
        head += bytes([bit | size])
    elif size < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def ws_read_frame(rfile: Reader) -> tuple[int, bytes]:
    first, second = read_exact(rfile, 2)
    size = second & 0x7F
    if size == 126:
        size = struct.unpack("!H", read_exact(rfile, 2))[0]
    elif size == 127:
        size = struct.unpack("!Q", read_exact(rfile, 8))[0]
    key = read_exact(rfile, 4) if second & 0x80 else b""
    payload = read_exact(rfile, size)
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return first & 0x0F, payload


# --- clients ------------------------------------------------------------------------------


def connect(host: str, port: int, timeout: float = IO_TIMEOUT) -> socket.socket:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def get_request(path: str, *, close: bool) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: app\r\nUser-Agent: sidecar-tests\r\n{extra}\r\n".encode()


def raw(
    host: str, port: int, data: bytes, read_bytes: int | None, timeout: float
) -> tuple[dict[str, Any], bytes]:
    """Send `data` (from a thread) while reading; stop at EOF, a reset, `read_bytes` or timeout.

    Sending and reading at once lets an echoing peer stream any amount back without both
    sides blocking on full buffers.
    """
    try:
        sock = connect(host, port, timeout)
    except ConnectionRefusedError:
        return {"sent": 0, "received": 0, "outcome": "refused"}, b""
    received = bytearray()
    sent = [0]

    def sendall() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(data)
            sent[0] = len(data)

    writer = threading.Thread(target=sendall, daemon=True)
    writer.start()
    outcome = "eof"
    with sock:
        try:
            while read_bytes is None or len(received) < read_bytes:
                chunk = sock.recv(CHUNK)
                if not chunk:
                    break
                received += chunk
            else:
                outcome = "complete"
        except ConnectionResetError:
            outcome = "reset"
        except TimeoutError:
            outcome = "timeout"
        writer.join(timeout)
    return {"sent": sent[0], "received": len(received), "outcome": outcome}, bytes(received)


def requests(host: str, port: int, paths: Sequence[str]) -> dict[str, Any]:
    """One connection per path (`Connection: close`), read to EOF; totals of what crossed."""
    sent = received = 0
    statuses = []
    for path in paths:
        request = get_request(path, close=True)
        data = bytearray()
        with connect(host, port) as sock:
            sock.sendall(request)
            while chunk := sock.recv(CHUNK):
                data += chunk
        sent += len(request)
        received += len(data)
        statuses.append(int(data.split(b" ", 2)[1]) if data else 0)
    return {"sent": sent, "received": received, "statuses": statuses}


def burst(host: str, port: int, path: str, count: int, out: str) -> None:
    """`count` requests at once, each on its own connection; one JSON line per answer."""
    lock = threading.Lock()
    start = threading.Barrier(count)

    def one() -> None:
        try:
            with connect(host, port, HOLD_LIMIT + IO_TIMEOUT) as sock:
                start.wait(IO_TIMEOUT)
                sock.sendall(get_request(path, close=True))
                with sock.makefile("rb") as rfile:
                    record = read_response(rfile)
        except (OSError, ValueError, threading.BrokenBarrierError) as exc:
            record = {"error": f"{type(exc).__name__}: {exc}"}
        with lock, open(out, "a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def session(host: str, port: int) -> None:
    """Keep-alive: each stdin line "METHOD PATH" is one request on the same connection."""
    sock = connect(host, port)
    local_port = sock.getsockname()[1]
    with sock, sock.makefile("rb") as rfile:
        for line in sys.stdin:
            method, _, path = line.strip().partition(" ")
            try:
                sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
                record = read_response(rfile, method=method)
            except (OSError, ValueError) as exc:
                record = {"error": f"{type(exc).__name__}: {exc}"}
            record["local_port"] = local_port
            print(json.dumps(record), flush=True)


def websocket(host: str, port: int, messages: Sequence[str], binary_size: int) -> dict[str, Any]:
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /chat HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with connect(host, port) as sock, sock.makefile("rb") as rfile:
        sock.sendall(request.encode())
        head = read_head(rfile)
        result: dict[str, Any] = {
            "status": int(head["first"].split()[1]),
            "accept_ok": head["headers"].get("sec-websocket-accept") == ws_accept(key),
            "echoes": [],
        }
        if result["status"] != 101:
            return result
        for text in messages:
            sock.sendall(ws_frame(0x1, text.encode(), mask=True))
            opcode, payload = ws_read_frame(rfile)
            result["echoes"].append([opcode, payload.decode("utf-8", "replace")])
        blob = os.urandom(binary_size)
        sock.sendall(ws_frame(0x2, blob, mask=True))
        opcode, payload = ws_read_frame(rfile)
        result["binary_echo_ok"] = opcode == 0x2 and payload == blob
        sock.sendall(ws_frame(0x8, struct.pack("!H", 1000), mask=True))
        opcode, payload = ws_read_frame(rfile)
        result["close"] = [opcode, struct.unpack("!H", payload[:2])[0] if payload else None]
    return result


def serve(kind: str, port: int) -> None:
    server: socketserver.BaseServer
    if kind == "echo":
        server = DualStackHTTPServer(("::", port), EchoHandler)
    elif kind == "hold":
        server = DualStackHTTPServer(("::", port), HoldHandler)
    elif kind == "ws-echo":
        server = DualStackTCPServer(("::", port), WebSocketEcho)
    elif kind == "banner":
        server = DualStackTCPServer(("::", port), BannerEcho)
    else:
        server = DualStackTCPServer(("::", port), TcpEcho)
    with server:
        server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("echo", "hold", "ws-echo", "tcp-echo", "banner"):
        serve(args.command, args.port)
    elif args.command == "raw":
        with open(args.send, "rb") as file:
            data = file.read()
        result, received = raw(args.host, args.port, data, args.read_bytes, args.timeout)
        if args.out:
            with open(args.out, "wb") as file:
                file.write(received)
        print(json.dumps(result), flush=True)
    elif args.command == "requests":
        print(json.dumps(requests(args.host, args.port, args.paths)), flush=True)
    elif args.command == "burst":
        burst(args.host, args.port, args.path, args.count, args.out)
    elif args.command == "session":
        session(args.host, args.port)
    else:
        doc = websocket(args.host, args.port, args.message, args.binary_size)
        print(json.dumps(doc), flush=True)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidecar_apps.py", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("echo", "hold", "ws-echo", "tcp-echo", "banner"):
        sub.add_parser(name).add_argument("--port", type=int, required=True)
    for name in ("raw", "requests", "burst", "session", "ws"):
        p = sub.add_parser(name)
        p.add_argument("host")
        p.add_argument("port", type=int)
        if name == "raw":
            p.add_argument("--send", required=True, help="file whose bytes are sent in one go")
            p.add_argument("--out", help="file that receives every byte read")
            p.add_argument("--read-bytes", type=int, help="stop after this many bytes")
            p.add_argument("--timeout", type=float, default=10.0)
        elif name == "requests":
            p.add_argument("paths", nargs="+")
        elif name == "burst":
            p.add_argument("path")
            p.add_argument("--count", type=int, required=True)
            p.add_argument("--out", required=True)
        elif name == "ws":
            p.add_argument("--message", action="append", default=[])
            p.add_argument("--binary-size", type=int, default=70000)
    return parser


if __name__ == "__main__":
    sys.exit(main())
