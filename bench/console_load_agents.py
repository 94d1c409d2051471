"""Simulated sofamesh agents for bench/console_load.py: one load-generator process.

    python bench/console_load_agents.py SPEC.json OUT.json

SPEC (written by bench/console_load.py): {"host", "port", "key_id", "nodes": [[app, ip,
hostname], ...], "wait", "period", "launch_end", "start", "end", "timeout"}; the times are
on CLOCK_MONOTONIC (time.monotonic), which every process on the machine shares. The access
key's secret comes in the environment variable SOFAMESH_BENCH_SECRET.

Each simulated node does what an agent does (console/DESIGN.md): register, fetch its config
(version 0: answered at once), then long-polls `GET /api/v1/agent/config?version=V&wait=S`
in a loop (the first wait is uniform(1, S) so the re-arms of the nodes are spread over time,
as for agents started at random moments), and every `period` seconds (jittered +-10 %)
posts its status and then its metrics. Every request is signed with
agent.console_client.sign_headers.

Connections are per node, as on real machines: the long-poll keeps its own keep-alive
connection; each status+metrics cycle opens a fresh connection, because uvicorn closes idle
keep-alive connections after 5 s and the cycle is 10 s.

The HTTP/1.1 client is a minimal one on asyncio streams (uvloop): the generator shares 2
CPUs with the console, and a full client (httpx) costs several times more CPU per request.

Recorded for requests that start in [start, end) (long-poll re-arms: sent after the launch,
with their 304 in the window): latency (ms) per kind, errors per kind and reason; every
config answer 200 received by a long-poll (node ip, time, hijack switch) so the
orchestrator can time its switch flips; the event loop's lateness (a 50 ms ticker).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import resource
import socket
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from agent.console_client import Credentials, sign_headers

MAX_HEAD = 64 * 1024
TICK = 0.05
SLOW_MS = 100.0
# Kinds of requests recorded.
REGISTER = "register"
CONFIG_INITIAL = "config_initial"
REARM = "rearm"
STATUS = "status"
METRICS = "metrics"
CONNECT = "connect"


class HttpError(Exception):
    """A transport or protocol failure (the reason is the message)."""


@dataclass(frozen=True)
class Spec:
    host: str
    port: int
    key_id: str
    nodes: list[tuple[str, str, str]]
    wait: int
    period: float
    launch_end: float
    start: float
    end: float
    timeout: float
    # What the nodes do besides registering: "status", "metrics", "poll" (all by default;
    # one alone for bench/console_load.py --costs).
    kinds: frozenset[str] = frozenset(("status", "metrics", "poll"))

    @classmethod
    def load(cls, path: Path) -> Spec:
        raw = json.loads(path.read_text())
        return cls(
            host=raw["host"],
            port=int(raw["port"]),
            key_id=raw["key_id"],
            nodes=[(a, i, h) for a, i, h in raw["nodes"]],
            wait=int(raw["wait"]),
            period=float(raw["period"]),
            launch_end=float(raw["launch_end"]),
            start=float(raw["start"]),
            end=float(raw["end"]),
            timeout=float(raw["timeout"]),
            kinds=frozenset(raw.get("kinds", ("status", "metrics", "poll"))),
        )


@dataclass
class Record:
    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    # Errors of requests started before the window (launch, warm-up).
    early_errors: dict[str, dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    configs: list[tuple[str, float, bool, int]] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)
    # (kind, monotonic time answered, ms) of measured requests slower than SLOW_MS.
    slow: list[tuple[str, float, float]] = field(default_factory=list)
    started: int = 0
    launched: int = 0


class Connection:
    """One HTTP/1.1 keep-alive connection (no pipelining)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.host_header = f"{host}:{port}"

    @property
    def open(self) -> bool:
        return self.writer is not None and not self.writer.is_closing()

    async def connect(self) -> None:
        try:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise HttpError(f"connect: {type(exc).__name__} {exc.errno}") from None
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes]:
        if not self.open:
            await self.connect()
        assert self.reader is not None and self.writer is not None
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host_header}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        try:
            return await self._response(self.reader)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            self.close()
            raise HttpError(f"read: {type(exc).__name__}") from None
        except ValueError as exc:
            self.close()
            raise HttpError(f"protocol: {exc}") from None

    async def _response(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEAD:
            raise ValueError("response head too large")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        chunked = close = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            if key == "content-length":
                length = int(value.strip())
            elif key == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif key == "connection" and "close" in value.lower():
                close = True
        body = b""
        if status in (204, 304) or status < 200:
            pass
        elif chunked:
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                parts.append(await reader.readexactly(size + 2))
                if size == 0:
                    break
            body = b"".join(p[:-2] for p in parts)
        elif length:
            body = await reader.readexactly(length)
        if close:
            self.close()
        return status, body


class Agents:
    def __init__(self, spec: Spec, secret: str) -> None:
        self.spec = spec
        self.credentials = Credentials(spec.key_id, secret)
        self.record = Record()
        self.rng = random.Random()
        self.stopping = False

    def in_window(self, t: float) -> bool:
        return self.spec.start <= t < self.spec.end

    def failed(self, kind: str, started: float, reason: str) -> None:
        if self.in_window(started):
            self.record.errors[kind][reason] += 1
        elif started < self.spec.start:
            self.record.early_errors[kind][reason] += 1

    async def call(
        self,
        conn: Connection,
        kind: str,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        timeout: float | None = None,
        expect: tuple[int, ...] = (200, 204),
    ) -> tuple[int, bytes, float, float] | None:
        """(status, body, started, elapsed seconds), or None after recording an error."""
        raw_query = urlencode(sorted((query or {}).items()))
        content = json.dumps(body, separators=(",", ":")).encode() if body is not None else b""
        headers = sign_headers(
            self.credentials, method=method, path=path, query=raw_query, body=content
        )
        if body is not None:
            headers["Content-Type"] = "application/json"
        target = f"{path}?{raw_query}" if raw_query else path
        started = time.monotonic()
        if self.in_window(started):
            self.record.sent[kind] += 1
        if not conn.open:
            await self._connect(conn, kind, started)
        try:
            async with asyncio.timeout(timeout or self.spec.timeout):
                status, answer = await conn.request(method, target, headers, content)
        except TimeoutError:
            conn.close()
            self.failed(kind, started, "timeout")
            return None
        except HttpError as exc:
            self.failed(kind, started, str(exc))
            return None
        elapsed = time.monotonic() - started
        if status not in expect:
            self.failed(kind, started, f"HTTP {status}")
            return None
        return status, answer, started, elapsed

    async def _connect(self, conn: Connection, kind: str, started: float) -> None:
        try:
            async with asyncio.timeout(self.spec.timeout):
                await conn.connect()
        except TimeoutError:
            conn.close()
            self.failed(kind, started, "connect timeout")
            raise HttpError("connect timeout") from None
        except HttpError as exc:
            self.failed(kind, started, str(exc))
            raise
        if self.in_window(started):
            self.record.samples[CONNECT].append((time.monotonic() - started) * 1000)

    def sample(self, kind: str, started: float, elapsed: float, *, always: bool = False) -> None:
        """Record a latency; `always` for the launch-only kinds (register, first fetch)."""
        if always or self.in_window(started):
            self.record.samples[kind].append(elapsed * 1000)
            if not always and elapsed * 1000 >= SLOW_MS:
                self.record.slow.append((kind, time.monotonic(), round(elapsed * 1000, 1)))

    async def node(self, app: str, ip: str, hostname: str, launch_at: float) -> None:
        await asyncio.sleep(max(0.0, launch_at - time.monotonic()))
        self.record.started += 1
        conn = Connection(self.spec.host, self.spec.port)
        version = 0
        try:
            while not self.stopping:
                got = await self._safe(
                    conn,
                    REGISTER,
                    "POST",
                    "/api/v1/agent/register",
                    body={"app": app, "ip": ip, "hostname": hostname},
                    expect=(200,),
                )
                if got is not None:
                    self.sample(REGISTER, got[2], got[3], always=True)
                    got = await self._safe(
                        conn,
                        CONFIG_INITIAL,
                        "GET",
                        "/api/v1/agent/config",
                        query={"app": app, "ip": ip, "version": "0", "wait": "0"},
                        expect=(200,),
                    )
                if got is not None:
                    self.sample(CONFIG_INITIAL, got[2], got[3], always=True)
                    version = int(json.loads(got[1])["version"])
                    break
                await asyncio.sleep(self.rng.uniform(1, 5))
            self.record.launched += 1
            posts = asyncio.create_task(self.posts(app, ip, hostname))
            try:
                if "poll" in self.spec.kinds:
                    await self.long_poll(conn, app, ip, version)
                else:
                    conn.close()
                    await asyncio.sleep(max(0.0, self.spec.end - time.monotonic()))
            finally:
                posts.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await posts
        finally:
            conn.close()

    async def _safe(
        self, conn: Connection, kind: str, method: str, path: str, **kwargs: Any
    ) -> tuple[int, bytes, float, float] | None:
        try:
            return await self.call(conn, kind, method, path, **kwargs)
        except HttpError:
            return None

    async def long_poll(self, conn: Connection, app: str, ip: str, version: int) -> None:
        wait = self.rng.randint(1, self.spec.wait)
        while not self.stopping:
            query = {"app": app, "ip": ip, "version": str(version), "wait": str(wait)}
            got = await self._safe(
                conn,
                REARM,
                "GET",
                "/api/v1/agent/config",
                query=query,
                timeout=wait + self.spec.timeout,
                expect=(200, 304),
            )
            if got is None:
                await asyncio.sleep(self.rng.uniform(0.5, 2))
                continue
            status, answer, started, elapsed = got
            if status == 304:
                # The console starts the wait after checking the signature and finding the
                # node, then reads the document once more when the wait ends: the time
                # beyond `wait` is the re-arm's own work. Counted by when the 304 arrives
                # (a re-arm sent in the window is answered after it when `wait` is long).
                # Long-polls sent during the launch burst are left out.
                if started >= self.spec.launch_end:
                    self.sample(REARM, started + elapsed, max(0.0, elapsed - wait))
            else:
                document = json.loads(answer)
                version = int(document["version"])
                now = time.monotonic()
                if self.in_window(now):
                    self.record.configs.append((ip, now, bool(document["hijack_enabled"]), version))
            wait = self.spec.wait

    async def posts(self, app: str, ip: str, hostname: str) -> None:
        period = self.spec.period
        due = time.monotonic() + self.rng.uniform(0, period)
        created = datetime.now(UTC).isoformat()
        net_in = net_out = 0
        kinds = self.spec.kinds
        if "status" not in kinds and "metrics" not in kinds:
            return
        while not self.stopping:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            due += self.rng.uniform(0.9 * period, 1.1 * period)
            conn = Connection(self.spec.host, self.spec.port)
            try:
                status = {
                    "app": app,
                    "ip": ip,
                    "hostname": hostname,
                    "sidecar_status": "Running",
                    "healthy": True,
                    "version": "0.1.0",
                    "created_at": created,
                    "backend": "nftables",
                    "rule_digest": "sha256-4f2a9c",
                    "ipv6": ":" in ip,
                }
                if "status" in kinds:
                    got = await self._safe(
                        conn, STATUS, "POST", "/api/v1/agent/status", body=status
                    )
                    if got is not None:
                        self.sample(STATUS, got[2], got[3])
                requests = self.rng.randint(500, 5000)
                net_in += requests * 900
                net_out += requests * 1400
                metrics = {
                    "app": app,
                    "ip": ip,
                    "at": datetime.now(UTC).isoformat(),
                    "node": {
                        "cpu_percent": round(self.rng.uniform(5, 60), 1),
                        "mem_percent": round(self.rng.uniform(20, 70), 1),
                        "net_in_bytes": net_in,
                        "net_out_bytes": net_out,
                        "load1": round(self.rng.uniform(0.1, 2.0), 2),
                    },
                    "ports": [
                        {
                            "direction": "inbound",
                            "port": 8080,
                            "requests": requests,
                            "errors": requests // 200,
                            "rt_ms_sum": round(requests * 3.5, 1),
                            "bytes_in": requests * 600,
                            "bytes_out": requests * 1200,
                        },
                        {
                            "direction": "outbound",
                            "port": 8081,
                            "requests": requests // 2,
                            "errors": 0,
                            "rt_ms_sum": round(requests * 2.0, 1),
                            "bytes_in": requests * 300,
                            "bytes_out": requests * 200,
                        },
                    ],
                }
                if "metrics" in kinds:
                    got = await self._safe(
                        conn, METRICS, "POST", "/api/v1/agent/metrics", body=metrics
                    )
                    if got is not None:
                        self.sample(METRICS, got[2], got[3])
            finally:
                conn.close()

    async def ticker(self) -> None:
        expected = time.monotonic() + TICK
        while not self.stopping:
            await asyncio.sleep(max(0.0, expected - time.monotonic()))
            now = time.monotonic()
            if self.in_window(now):
                self.record.lag.append((now - expected) * 1000)
            expected = now + TICK

    async def run(self) -> None:
        spec = self.spec
        launch_from = time.monotonic()
        span = max(0.0, spec.launch_end - launch_from)
        count = max(1, len(spec.nodes))
        tasks = [asyncio.create_task(self.ticker())]
        tasks += [
            asyncio.create_task(self.node(app, ip, host, launch_from + span * i / count))
            for i, (app, ip, host) in enumerate(spec.nodes)
        ]
        await asyncio.sleep(max(0.0, spec.end - time.monotonic()))
        self.stopping = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def result(self) -> dict[str, Any]:
        r = self.record
        return {
            "pid": os.getpid(),
            "nodes": len(self.spec.nodes),
            "started": r.started,
            "launched": r.launched,
            "samples": {k: [round(v, 3) for v in vs] for k, vs in r.samples.items()},
            "errors": {k: dict(v) for k, v in r.errors.items()},
            "early_errors": {k: dict(v) for k, v in r.early_errors.items()},
            "sent": dict(r.sent),
            "configs": r.configs,
            "lag": [round(v, 3) for v in r.lag],
            "slow": r.slow[:20000],
        }


def raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    spec = Spec.load(Path(argv[0]))
    secret = os.environ.get("SOFAMESH_BENCH_SECRET", "")
    if not secret:
        print("SOFAMESH_BENCH_SECRET is not set", file=sys.stderr)
        return 2
    raise_nofile()
    agents = Agents(spec, secret)
    try:
        import uvloop  # noqa: PLC0415

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(agents.run())
    Path(argv[1]).write_text(json.dumps(agents.result()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
