"""Load clients for bench/proxy.py; they run inside the client VM (standard library only).

    python -P bench/proxy_client.py rate HOST PORT [--rate 1000] [--connections 16]
        [--duration 10] [--warmup 1] [--path /a.txt]
    python -P bench/proxy_client.py hold HOST PORT [--connections 1000] [--path /a.txt]

`rate`: an open-loop load generator. Request i is due at t0 + i/rate; a dispatcher hands
due requests to the first free one of `connections` keep-alive HTTP/1.1 connections (no
pipelining). Each latency is taken with time.perf_counter_ns twice: from the moment the
request was written ("service", what a hop adds) and from the moment it was due
("corrected", which also counts waiting for a free connection and the dispatcher's own
lateness, as wrk2 does). Requests due during the warm-up are sent but not recorded. Prints
one JSON object.

`hold`: opens `connections` sockets, sends one request on each, reads every response, then
prints "held N" and keeps them all open until its standard input closes (or 120 s pass).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import select
import socket
import sys
import time
from collections.abc import Sequence

HOLD_LIMIT_S = 120.0
MAX_HEAD = 64 * 1024
NS = 1_000_000_000


def _raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def request_bytes(host: str, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sofamesh-bench\r\n\r\n".encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response with a Content-Length body; (status, server wants to close)."""
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_HEAD:
        raise ValueError("response head too large")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = None
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        if key == "content-length":
            length = int(value.strip())
        elif key == "connection" and "close" in value.lower():
            close = True
    if length is None:
        raise ValueError(f"response without Content-Length: {lines[0]!r}")
    if length:
        await reader.readexactly(length)
    return status, close


def percentile(sorted_values: Sequence[int], pct: float) -> float:
    """Nearest-rank percentile (ns in, ms out)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-pct * len(sorted_values) // 100))))
    return sorted_values[rank - 1] / 1e6


class RateRun:
    """One open-loop run: a dispatcher and `connections` keep-alive connections."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.warm = int(args.rate * args.warmup)
        self.payload = request_bytes(args.host, args.path)
        self.queue: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()
        self.service: list[int] = []
        self.corrected: list[int] = []
        self.counts = {"sent": 0, "ok": 0, "non200": 0, "errors": 0, "reconnects": 0, "late": 0}
        self.error_samples: list[str] = []

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.args.host, self.args.port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def connection(self) -> None:
        counts = self.counts
        reader, writer = await self.connect()
        while True:
            item = await self.queue.get()
            if item is None:
                break
            index, due = item
            sent = time.perf_counter_ns()
            if sent - due > NS // 1000:
                counts["late"] += 1
            counts["sent"] += 1
            try:
                writer.write(self.payload)
                status, close = await read_response(reader)
            except (OSError, EOFError, ValueError, asyncio.IncompleteReadError) as exc:
                counts["errors"] += 1
                if len(self.error_samples) < 5:
                    self.error_samples.append(f"{type(exc).__name__}: {exc}")
                close = True
            else:
                done = time.perf_counter_ns()
                counts["ok" if status == 200 else "non200"] += 1
                if index >= self.warm:
                    self.service.append(done - sent)
                    self.corrected.append(done - due)
            if close:
                writer.close()
                reader, writer = await self.connect()
                counts["reconnects"] += 1
        writer.close()

    async def run(self) -> dict[str, object]:
        args = self.args
        interval_ns = NS / args.rate
        total = int(args.rate * (args.warmup + args.duration))
        workers = [asyncio.create_task(self.connection()) for _ in range(args.connections)]
        await asyncio.sleep(0.2)  # let every connection finish its handshake
        start = time.perf_counter_ns()
        for index in range(total):
            due = start + int(index * interval_ns)
            now = time.perf_counter_ns()
            if due > now:
                await asyncio.sleep((due - now) / NS)
            self.queue.put_nowait((index, due))
        for _ in workers:
            self.queue.put_nowait(None)
        await asyncio.wait_for(asyncio.gather(*workers), timeout=30)
        elapsed = (time.perf_counter_ns() - start) / NS
        self.service.sort()
        self.corrected.sort()
        return {
            "rate_target": args.rate,
            "connections": args.connections,
            "requests_total": self.counts["sent"],
            "elapsed_s": round(elapsed, 3),
            "achieved_rps": round(self.counts["sent"] / elapsed, 1),
            "recorded": len(self.service),
            **self.counts,
            "error_samples": self.error_samples,
            "service_ms": {p: percentile(self.service, float(p)) for p in ("50", "90", "99")},
            "corrected_ms": {p: percentile(self.corrected, float(p)) for p in ("50", "90", "99")},
        }


def hold(args: argparse.Namespace) -> int:
    _raise_nofile(args.connections)
    payload = request_bytes(args.host, args.path)
    socks: list[socket.socket] = []
    bad = 0
    for _ in range(args.connections):
        sock = socket.create_connection((args.host, args.port), timeout=10)
        socks.append(sock)
        sock.sendall(payload)
    for sock in socks:
        data = b""
        while b"\r\n\r\n" not in data and len(data) < MAX_HEAD:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        if status != b"200" or len(body) != length:
            bad += 1
    print(f"held {len(socks)} bad {bad}", flush=True)
    # The bench writes a line (or closes our stdin) once it has read the proxy's memory.
    readable, _, _ = select.select([sys.stdin], [], [], HOLD_LIMIT_S)
    for sock in socks:
        sock.close()
    return 0 if readable and not bad else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="proxy_client.py")
    sub = p.add_subparsers(dest="mode", required=True)
    rate = sub.add_parser("rate")
    rate.add_argument("host")
    rate.add_argument("port", type=int)
    rate.add_argument("--rate", type=float, default=1000.0)
    rate.add_argument("--connections", type=int, default=16)
    rate.add_argument("--duration", type=float, default=10.0)
    rate.add_argument("--warmup", type=float, default=1.0)
    rate.add_argument("--path", default="/a.txt")
    held = sub.add_parser("hold")
    held.add_argument("host")
    held.add_argument("port", type=int)
    held.add_argument("--connections", type=int, default=1000)
    held.add_argument("--path", default="/a.txt")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.mode == "rate":
        _raise_nofile(args.connections)
        print(json.dumps(asyncio.run(RateRun(args).run())), flush=True)
        return 0
    return hold(args)


if __name__ == "__main__":
    sys.exit(main())
