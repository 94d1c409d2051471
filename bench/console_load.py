"""How many agents does one console process hold? (issue 4: p99 < 100 ms at 2,000 nodes;
goal 10,000)

Runs ONE console process (`python -m agent console serve` on 127.0.0.1, a free port) on
SQLite and, in the same run, on PostgreSQL (a throw-away cluster: initdb + pg_ctl as user
postgres in a temp dir, unix socket only), and a load of simulated agents against it
(bench/console_load_agents.py: asyncio + uvloop, one or two processes). Before the load,
an operator, tenant, workspace, instance and access key are made with `sofamesh console
admin`, and apps of 1,000 nodes each with the operator API; the node IPs come from the
documentation ranges 198.51.100.0/24, 203.0.113.0/24 and 2001:db8::/32 (only strings in the
database: every request goes to the console on 127.0.0.1).

Each simulated node registers, fetches its config, long-polls it (`wait` 30 s) and posts its
status and metrics every 10 s (jittered). After the launch (100 nodes/s) and a warm-up, a
measured window records: p50/p99 latency of status posts, metrics posts and long-poll
re-arms (the part of a long-poll that is not waiting: its 304 time minus `wait`), errors,
the wake latency of a long-poll (every few seconds one node's hijack switch is flipped with
the operator API and the time until its agent holds the new config is taken), the
operator's PUT latency, and the CPU and memory of the console, of PostgreSQL, of the
generators and of everything else (psutil), and how many PostgreSQL connections the
console opened. A step passes when the p99 of each of the three kinds is under 100 ms with at
most 0.1 % errors. `--search` then looks for the largest node count that passes (up the
ladder 2,000, 4,000, 6,000, 10,000, ... or down by halves, then bisecting); `--costs`
measures the console's CPU per request of each kind alone; `--profile` adds a run under
py-spy (GIL holders and every thread) and perf (CPU by library), and splits the costs too.

    .venv/bin/python bench/console_load.py [--nodes 2000] [--search] [--duration 60]
        [--db sqlite,postgresql] [--costs] [--profile] [--quick] [--write-results]

The default run (2,000 nodes on both databases) takes about 5 minutes; with --search
--costs --profile about 25. Needs root and Debian's postgresql for the PostgreSQL half
(skipped with a note otherwise); py-spy (`.venv/bin/pip install py-spy`) and perf
(linux-perf) for --profile.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import importlib.metadata
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib
import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
AGENTS_FILE = Path(__file__).resolve().parent / "console_load_agents.py"
SECTION_BEGIN = "<!-- console_load:begin -->"
SECTION_END = "<!-- console_load:end -->"

TARGET_MS = 100.0  # p99 of each measured kind
TARGET_NODES = 2000
GOAL_NODES = 10000
MAX_ERROR_RATE = 0.001  # a step passes with at most 0.1 % failed requests
NODES_PER_APP = 1000  # the API's limit for one app
LADDER = (2000, 4000, 6000, 10000, 14000, 18000)
MIN_NODES = 125  # the downward search stops here
LAUNCH_RATE = 100.0  # nodes started per second (faster for large counts: LAUNCH_MAX)
LAUNCH_MAX = 60.0  # seconds
NODES_PER_GENERATOR = 5000
PORTS = [8080, 8081]
PASSWORD = "bench-password-1"  # noqa: S105  (a throw-away operator of a throw-away DB)
OPERATOR = "bench-op"
TENANT, WORKSPACE, INSTANCE = "bench", "ws", "load"
KINDS = ("status", "metrics", "rearm")
KINDS_ALL = ("status", "metrics", "poll")  # what the simulated nodes do
KIND_LABEL = {
    "status": "status post",
    "metrics": "metrics post",
    "rearm": "long-poll re-arm",
    "connect": "TCP connect (post cycle)",
    "register": "register (launch)",
    "config_initial": "first config fetch (launch)",
}
LOG_PATTERNS = {
    "tracebacks": "Traceback (most recent call last)",
    "errors": " ERROR ",
    "database is locked": "database is locked",
    "pool timeouts": "QueuePool limit",
    "too many open files": "Too many open files",
}
MB = 1024 * 1024
PG_DATABASE = "console_load"
PROFILE_RATE = 100
PERF = "perf.data"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def node_ips(count: int) -> list[str]:
    """Documentation addresses: 198.51.100.1-254, 203.0.113.1-254, then 2001:db8::1, ..."""
    ips = [f"198.51.100.{i}" for i in range(1, 255)] + [f"203.0.113.{i}" for i in range(1, 255)]
    ips = ips[:count]
    n = 1
    while len(ips) < count:
        ips.append(f"2001:db8::{n:x}")
        n += 1
    return ips


def app_name(index: int) -> str:
    return f"load-{index:02d}"


def nodes_of(count: int) -> list[tuple[str, str, str]]:
    """(app, ip, hostname) of the first `count` nodes."""
    return [
        (app_name(i // NODES_PER_APP), ip, f"node-{i:05d}") for i, ip in enumerate(node_ips(count))
    ]


# --- PostgreSQL ----------------------------------------------------------------------------


def pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PgCluster:
    """A throw-away cluster in a temp dir, unix socket only, run as user postgres (as
    tests/console/conftest.py does). fsync stays on; synchronous_commit=off matches the
    console's SQLite setting (WAL, synchronous=NORMAL: no flush per commit)."""

    SETTINGS = ("max_connections=200", "synchronous_commit=off", "shared_buffers=128MB")

    def __init__(self, base: Path, bindir: Path) -> None:
        self.base = base
        self.bindir = bindir
        self.data = base / "data"
        self.user = "sofamesh"
        self.run_as: dict[str, Any] = {}

    def start(self) -> None:
        os.chmod(self.base, 0o755)  # noqa: S103  (the postgres user must reach its socket)
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
            self.run_as = {"user": "postgres", "group": "postgres"}
        subprocess.run(
            [
                str(self.bindir / "initdb"),
                *("-D", str(self.data), "-U", self.user, "--auth=trust"),
                *("-E", "UTF8", "--no-sync"),
            ],
            check=True,
            capture_output=True,
            **self.run_as,
        )
        options = f"-k {self.base} -c listen_addresses=''" + "".join(
            f" -c {s}" for s in self.SETTINGS
        )
        subprocess.run(
            [
                str(self.bindir / "pg_ctl"),
                *("-D", str(self.data), "-o", options),
                *("-l", str(self.base / "log"), "-w", "start"),
            ],
            check=True,
            capture_output=True,
            **self.run_as,
        )

    def stop(self) -> None:
        subprocess.run(
            [self.bindir / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"],
            check=False,
            capture_output=True,
            **self.run_as,
        )

    def create_database(self, name: str) -> str:
        import psycopg  # noqa: PLC0415

        dsn = f"dbname=postgres user={self.user} host={self.base}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{self.user}@/{name}?host={self.base}"

    def sessions_opened(self, name: str) -> int:
        """Connections ever opened to database `name` (pg_stat_database.sessions)."""
        import psycopg  # noqa: PLC0415

        dsn = f"dbname=postgres user={self.user} host={self.base}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT sessions FROM pg_stat_database WHERE datname = %s", (name,)
            ).fetchone()
        return int(row[0]) if row else 0

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])


# --- CPU and memory --------------------------------------------------------------------------


def _cpu(proc: psutil.Process, children: bool = False) -> float:
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    total = t.user + t.system
    if children:
        total += t.children_user + t.children_system
    return float(total)


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its reaped children and its live descendants."""
    try:
        root = psutil.Process(pid)
        kids = root.children(recursive=True)
    except psutil.Error:
        return 0.0
    return _cpu(root, children=True) + sum(_cpu(k) for k in kids)


def tree_rss(proc: psutil.Process) -> float:
    """MB resident in a process and its children (several console workers)."""
    total = proc.memory_info().rss
    for kid in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += kid.memory_info().rss
    return total / MB


def machine_busy() -> float:
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


@dataclass
class CpuMark:
    at: float
    console: float
    postgres: float
    machine: float
    pg_sessions: int


# --- The console process -------------------------------------------------------------------


class Console:
    def __init__(self, db_url: str, log_path: Path, workers: int = 1) -> None:
        self.db_url = db_url
        self.workers = workers
        self.log_path = log_path
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_offset = 0
        self.started = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, deadline: float = 60.0) -> Console:
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.started = time.monotonic()
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "agent", "console", "serve"),
                    *("--db", self.db_url, "--listen", f"127.0.0.1:{self.port}"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, "SOFAMESH_CONSOLE_WORKERS": str(self.workers)},
            )
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"console exited {self.proc.returncode}: see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200:
                    return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"console not ready within {deadline}s: see {self.log_path}")

    def health(self) -> dict[str, Any]:
        try:
            answer: dict[str, Any] = httpx.get(f"{self.url}/api/v1/health", timeout=10).json()
        except (httpx.HTTPError, ValueError) as exc:
            return {"error": type(exc).__name__}
        return answer

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_findings(self, window: tuple[float, float]) -> LogFindings:
        """What this start logged before its shutdown: worrying patterns, exceptions by
        type and phase (before, in, after the measured window), other warnings; and the
        long-polls uvicorn cancelled at shutdown."""
        with self.log_path.open("rb") as f:
            f.seek(self.log_offset)
            text = f.read().decode(errors="replace")
        running, _sep, shutdown = text.partition("uvicorn.error: Shutting down")
        cancelled = re.search(r"Cancel (\d+) running task", shutdown)
        found = LogFindings(
            patterns={name: running.count(pattern) for name, pattern in LOG_PATTERNS.items()},
            cancelled_at_stop=int(cancelled[1]) if cancelled else 0,
        )
        start, end = (_log_time(t) for t in window)
        stamp = tb_stamp = exc = ""

        def flush() -> None:
            if exc:
                phase = (
                    "before the window"
                    if tb_stamp < start
                    else "in the window"
                    if tb_stamp < end
                    else "after the window"
                )
                found.exceptions.setdefault(phase, Counter())[exc] += 1

        for line in running.splitlines():
            head = LOG_LINE.match(line)
            if head:
                flush()
                exc = ""
                stamp = head[1]
                if head[2] in ("WARNING", "ERROR", "CRITICAL") and "Exception in ASGI" not in line:
                    found.messages[re.sub(r"\d+", "N", line[len(head[0]) :])[:200]] += 1
            elif line.startswith("Traceback (most recent call last)"):
                tb_stamp = stamp
            elif tb_stamp and not line.startswith((" ", "During handling", "The above")):
                name = EXC_LINE.match(line)
                if name:
                    exc = name[1]
        flush()
        return found


LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+) ")
EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")


def _log_time(t: float) -> str:
    """The console's log timestamp format (logging's asctime, local time)."""
    if not math.isfinite(t):
        return "9999"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f",{int(t % 1 * 1000):03d}"


@dataclass
class LogFindings:
    patterns: dict[str, int] = field(default_factory=dict)
    exceptions: dict[str, Counter[str]] = field(default_factory=dict)
    messages: Counter[str] = field(default_factory=Counter)
    cancelled_at_stop: int = 0

    def text(self) -> str:
        parts = [
            f"{phase}: " + ", ".join(f"`{name}` x{n}" for name, n in counter.most_common())
            for phase, counter in self.exceptions.items()
        ]
        parts += [f"`{m.strip()}` x{n}" for m, n in self.messages.most_common(4)]
        return "; ".join(parts)


# --- One backend: database, provisioning -----------------------------------------------------


@dataclass
class Backend:
    name: str
    url: str
    workdir: Path
    pg: PgCluster | None = None
    key_id: str = ""
    secret: str = field(default="", repr=False)
    apps: int = 0
    hijack: dict[str, bool] = field(default_factory=dict)

    def admin(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "agent", "console", "admin", *args, "--db", self.url],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"admin {args[0]}: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def provision(self) -> None:
        """The operator, scope and access key (once; `sofamesh console admin`)."""
        if self.key_id:
            return
        self.admin("create-user", OPERATOR, "--password-stdin", stdin=PASSWORD + "\n")
        self.admin("create-tenant", TENANT)
        self.admin("create-workspace", TENANT, WORKSPACE)
        self.admin("create-instance", TENANT, WORKSPACE, INSTANCE)
        created = json.loads(
            self.admin("create-key", OPERATOR, TENANT, WORKSPACE, INSTANCE, "--json")
        )
        self.key_id, self.secret = created["key_id"], created["secret"]

    def ensure_apps(self, operator: httpx.Client, nodes: int) -> None:
        """Apps of 1,000 nodes each until `nodes` nodes exist (operator API)."""
        ips = node_ips(math.ceil(nodes / NODES_PER_APP) * NODES_PER_APP)
        while self.apps * NODES_PER_APP < nodes:
            k = self.apps
            chunk = ips[k * NODES_PER_APP : (k + 1) * NODES_PER_APP]
            answer = operator.post(
                "/api/v1/apps", json={"name": app_name(k), "ports": PORTS, "nodes": chunk}
            )
            if answer.status_code != 201:
                raise RuntimeError(f"create app {app_name(k)}: {answer.status_code} {answer.text}")
            self.apps += 1
            for ip in chunk:
                self.hijack[ip] = False

    def stop(self) -> None:
        if self.pg is not None:
            self.pg.stop()


def login(url: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=60)
    answer = client.post("/api/v1/session", json={"username": OPERATOR, "password": PASSWORD})
    answer.raise_for_status()
    client.headers["X-CSRF-Token"] = answer.json()["csrf_token"]
    scope = {"tenant": TENANT, "workspace": WORKSPACE, "instance_id": INSTANCE}
    client.put("/api/v1/session/scope", json=scope).raise_for_status()
    return client


# --- Statistics ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Lat:
    count: int
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Lat:
        if not values:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan)
        ordered = sorted(values)
        return cls(
            len(ordered),
            percentile(ordered, 50),
            percentile(ordered, 90),
            percentile(ordered, 99),
            ordered[-1],
        )


def percentile(ordered: Sequence[float], pct: float) -> float:
    """Nearest rank."""
    rank = max(1, min(len(ordered), math.ceil(pct * len(ordered) / 100)))
    return float(ordered[rank - 1])


@dataclass
class Flip:
    ip: str
    enabled: bool
    sent: float
    answered: float
    status: int
    received: float | None = None


@dataclass
class Step:
    """One measured run at one node count."""

    backend: str
    nodes: int
    duration: float
    generators: int
    kinds: tuple[str, ...] = KINDS_ALL
    # Console worker processes (SOFAMESH_CONSOLE_WORKERS; several only on PostgreSQL).
    workers: int = 1
    lat: dict[str, Lat] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    errors: dict[str, dict[str, int]] = field(default_factory=dict)
    early_errors: dict[str, dict[str, int]] = field(default_factory=dict)
    launched: int = 0
    long_polls: int = 0
    flips: list[Flip] = field(default_factory=list)
    console_cpu: float = 0.0  # % of one CPU
    postgres_cpu: float = 0.0
    generator_cpu: list[float] = field(default_factory=list)
    machine_cpu: float = 0.0
    rss_peak: float = 0.0  # MB
    rss_end: float = 0.0
    threads: int = 0
    fds: int = 0
    nofile: int = 0
    lag: Lat = field(default_factory=lambda: Lat.of([]))
    load_before: str = ""
    load_after: str = ""
    logged: LogFindings = field(default_factory=LogFindings)
    # Long-polls still held by the console 3 s after every agent closed its connections,
    # and those uvicorn cancelled at shutdown.
    lingering: int = 0
    cancelled_at_stop: int = 0
    # (kind, monotonic time answered, ms) of measured requests over 100 ms; when the
    # console process started and the window began (monotonic).
    slow: list[tuple[str, float, float]] = field(default_factory=list)
    pg_sessions: int = 0  # PostgreSQL connections the console opened in the window
    console_started: float = 0.0
    window_start: float = 0.0

    def stalls(self) -> str:
        """How the slow requests spread over time: many in a few seconds are stalls (the
        console stopped answering for a moment), spread evenly they are queueing."""
        if not self.slow:
            return "none"
        slots = Counter(int(t - self.window_start) for _k, t, _ms in self.slow)
        worst = slots.most_common(3)
        since = [int(t - self.console_started) for _k, t, _ms in self.slow]
        return (
            f"{len(self.slow):,} requests over 100 ms in {len(slots)} of "
            f"{int(self.duration)} one-second slots; busiest: "
            + ", ".join(f"{n} at +{s} s" for s, n in worst)
            + f" of the window ({min(since)}..{max(since)} s after the console started)"
        )

    profile: dict[str, Any] | None = None

    @property
    def error_count(self) -> int:
        return sum(sum(v.values()) for v in self.errors.values())

    @property
    def request_count(self) -> int:
        return sum(self.sent.get(k, 0) for k in KINDS)

    @property
    def worst_p99(self) -> float:
        values = [self.lat[k].p99 for k in KINDS if k in self.lat and self.lat[k].count]
        return max(values) if len(values) == len(KINDS) else float("inf")

    @property
    def passed(self) -> bool:
        return (
            self.worst_p99 < TARGET_MS
            and self.error_count <= MAX_ERROR_RATE * max(1, self.request_count)
            and self.launched == self.nodes
        )

    @property
    def cpu_per_request(self) -> float:
        """Console CPU ms per agent request answered in the window."""
        answered = sum(self.lat[k].count for k in KINDS if k in self.lat)
        return 10 * self.console_cpu * self.duration / answered if answered else float("nan")

    @property
    def others_cpu(self) -> float:
        return max(
            0.0,
            self.machine_cpu - self.console_cpu - self.postgres_cpu - sum(self.generator_cpu),
        )

    def wake(self) -> tuple[Lat, Lat, int]:
        """Wake latency from the PUT's answer and from its sending; flips not seen."""
        done = [f for f in self.flips if f.received is not None and f.status == 200]
        after_answer = [((f.received or 0) - f.answered) * 1000 for f in done]
        after_send = [((f.received or 0) - f.sent) * 1000 for f in done]
        return Lat.of(after_answer), Lat.of(after_send), len(self.flips) - len(done)

    def put_latency(self) -> Lat:
        return Lat.of([(f.answered - f.sent) * 1000 for f in self.flips])

    def limits(self) -> list[str]:
        """What this run's numbers point at."""
        found = []
        cores = os.cpu_count() or 1
        if self.console_cpu >= 85:
            found.append(
                f"console CPU {self.console_cpu:.0f} % of one core: saturated (one Python "
                "process: the GIL lets it use about one core)"
            )
        elif self.console_cpu >= 50:
            found.append(
                f"console CPU {self.console_cpu:.0f} % of one core: requests queue behind each "
                "other in bursts (one Python process, GIL)"
            )
        if self.machine_cpu >= 90 * cores:
            found.append(f"machine CPUs saturated ({self.machine_cpu:.0f} % of {cores * 100} %)")
        if any(g >= 85 for g in self.generator_cpu):
            found.append("a load generator near one full core (its latencies include its own lag)")
        if self.lag.count and self.lag.p99 >= 20:
            found.append(f"generator event loop late by {self.lag.p99:.0f} ms at p99")
        patterns = self.logged.patterns
        if patterns.get("database is locked"):
            found.append(f"SQLite 'database is locked' x{patterns['database is locked']}")
        if patterns.get("pool timeouts"):
            found.append(f"connection pool timeouts x{patterns['pool timeouts']}")
        if patterns.get("too many open files") or (self.nofile and self.fds > 0.95 * self.nofile):
            found.append(f"file descriptors: {self.fds} open of {self.nofile}")
        if self.launched < self.nodes:
            found.append(f"only {self.launched} of {self.nodes} nodes got through launch")
        if self.pg_sessions >= self.duration:
            found.append(
                f"PostgreSQL connection churn: {self.pg_sessions:,} new connections in the "
                f"window (PostgreSQL CPU {self.postgres_cpu:.0f} %)"
            )
        if self.others_cpu >= 30:
            found.append(f"other processes used {self.others_cpu:.0f} % of a CPU meanwhile (noise)")
        return found


def merge_outputs(step: Step, outputs: list[dict[str, Any]]) -> None:
    samples: dict[str, list[float]] = defaultdict(list)
    lag: list[float] = []
    configs: list[tuple[str, float, bool, int]] = []
    sent: Counter[str] = Counter()
    step.slow = []
    for out in outputs:
        step.slow += [(k, t, ms) for k, t, ms in out.get("slow", [])]
        for kind, values in out["samples"].items():
            samples[kind].extend(values)
        for name, target in (("errors", step.errors), ("early_errors", step.early_errors)):
            for kind, reasons in out[name].items():
                bucket = target.setdefault(kind, {})
                for reason, n in reasons.items():
                    bucket[reason] = bucket.get(reason, 0) + n
        sent.update(out["sent"])
        lag.extend(out["lag"])
        configs.extend((c[0], c[1], c[2], c[3]) for c in out["configs"])
        step.launched += out["launched"]
    step.lat = {kind: Lat.of(values) for kind, values in samples.items()}
    step.sent = dict(sent)
    step.lag = Lat.of(lag)
    for flip in step.flips:
        seen = sorted(
            t for ip, t, enabled, _v in configs if ip == flip.ip and enabled == flip.enabled
        )
        later = [t for t in seen if t >= flip.sent]
        flip.received = later[0] if later else None


# --- Profiling -----------------------------------------------------------------------------

CATEGORIES = (
    ("database driver (SQL execution, commit)", ("sqlalchemy/engine/default.py",)),
    ("SQLAlchemy ORM", ("sqlalchemy/orm/",)),
    ("SQLAlchemy core (statements, pool, rows)", ("sqlalchemy/",)),
    ("pydantic (validation, serialisation)", ("pydantic",)),
    ("FastAPI / Starlette (routing, dependencies)", ("fastapi/", "starlette/")),
    ("uvicorn (HTTP protocol)", ("uvicorn/",)),
    ("thread pool hand-offs (anyio, threading)", ("anyio/", "threading.py", "concurrent/")),
    ("event loop (asyncio)", ("asyncio/",)),
    ("logging (access log)", ("logging/",)),
    ("json", ("json/",)),
    ("hashing (HMAC, SHA-256)", ("hmac.py", "hashlib.py")),
    ("psycopg (PostgreSQL driver)", ("psycopg/",)),
    ("console code", ("/console/",)),
)
INCLUSIVE = (
    (
        "fast path: headers, signature (HMAC), body/query validation",
        "_admissible (console/agentfast.py",
    ),
    ("  of which pydantic + json (body validation)", "parse (console/agentfast.py"),
    ("FastAPI routes (requests handed on, operator API)", "fastapi/routing.py"),
    ("agent DB jobs (worker thread: SQL, commit)", "_execute (console/agentdb.py"),
    ("  of which the SQL commit", "do_commit (sqlalchemy/engine/default.py"),
    ("  of which config documents (built on a version change)", "document (console/agentjobs.py"),
    (
        "long-poll wait bookkeeping (subscribe, wake, disconnect watch)",
        "poll (console/agentfast.py;!_execute",
    ),
    ("upkeep: sidecar snapshot (every 10 s)", "_snapshot (console/app.py"),
    ("upkeep: purge (every 10 s)", "_purge (console/app.py"),
    ("log lines (uvicorn access log, console events)", "callHandlers (logging/__init__.py"),
)
# Exclusive buckets for the per-request split: the first that matches a stack wins.
BUCKETS = (
    ("auth + validation", ("_admissible (console/agentfast.py", "agent (console/auth.py")),
    ("DB jobs", ("console/agentdb.py",)),
    ("upkeep", ("_snapshot (console/app.py", "_purge (console/app.py")),
    ("thread hand-offs", ("anyio/", "threading.py", "concurrent/", "queue.py")),
    ("HTTP + framework", ("",)),
)


def read_raw(path: Path) -> list[tuple[list[str], int]]:
    stacks: list[tuple[list[str], int]] = []
    if not path.exists():
        return stacks
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def profile_summary(workdir: Path, seconds: float) -> dict[str, Any]:
    """py-spy raw outputs: where the GIL-holding time goes, and what the threads do."""
    stacks = read_raw(workdir / "profile-gil.txt")
    total = sum(n for _s, n in stacks) or 1
    by_category: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, n in stacks:
        leaf = frames[-1] if frames else "?"
        by_leaf[_short(leaf)] += n
        by_category[_category(leaf)] += n
        joined = ";".join(frames)
        for label, needle in INCLUSIVE:
            want, _, unwanted = needle.partition(";!")
            if want in joined and not (unwanted and unwanted in joined):
                inclusive[label] += n
    buckets: Counter[str] = Counter()
    for frames, n in stacks:
        buckets[_bucket(frames)] += n
    threads: Counter[str] = Counter()
    for frames, n in read_raw(workdir / "profile-all.txt"):
        threads[_thread_state(frames)] += n
    per_second = PROFILE_RATE * seconds
    return {
        "perf_dso": perf_split(workdir / PERF, "dso"),
        "perf_sym": perf_split(workdir / PERF, "dso,sym")[:10],
        "samples": total,
        "seconds": seconds,
        "gil_busy": total / per_second,
        "categories": [(k, 100 * v / total) for k, v in by_category.most_common()],
        "leaves": [(k, 100 * v / total) for k, v in by_leaf.most_common(12)],
        "inclusive": [(label, 100 * inclusive[label] / total) for label, _n in INCLUSIVE],
        "threads": [(k, v / per_second) for k, v in threads.most_common()],
        # GIL-held seconds per bucket.
        "buckets": {label: buckets[label] / PROFILE_RATE for label, _n in BUCKETS},
    }


def perf_split(data: Path, keys: str) -> list[tuple[str, float]]:
    """`perf report --sort KEYS`: (name, % of the samples), largest first."""
    perf = shutil.which("perf")
    if not perf or not data.exists():
        return []
    done = subprocess.run(
        [perf, "report", "-i", str(data), "--sort", keys, "--stdio", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    out = []
    for line in done.stdout.splitlines():
        match = re.match(r"^\s*([\d.]+)%\s+(.*\S)", line)
        if match:
            name = re.sub(r"\s+\[[.kHu]\]\s+", " ", match[2])
            out.append((re.sub(r"\s{2,}", " ", name), float(match[1])))
    return out


def _bucket(frames: list[str]) -> str:
    joined = ";".join(frames)
    leaf = frames[-1] if frames else ""
    for label, needles in BUCKETS:
        if label == "thread hand-offs":
            if any(n in leaf for n in needles):
                return label
        elif any(n in joined for n in needles):
            return label
    return "HTTP + framework"


DB_CALLS = ("do_execute (", "do_commit (", "do_rollback (", "do_executemany (", "psycopg/")
WAITS = ("threading.py", "queue.py")


def _thread_state(frames: list[str]) -> str:
    """What one sampled thread was doing (average thread counts per state)."""
    leaf = frames[-1] if frames else ""
    if not frames or not frames[0].startswith("Thread._bootstrap"):
        if leaf.startswith(("Runner.run (", "run_until_complete (", "run (")):
            return "event loop thread: in the loop (epoll wait or C callbacks)"
        return "event loop thread: running Python (or waiting for the GIL)"
    joined = ";".join(frames)
    if "WorkerThread.run" in joined and all(
        any(w in f for w in WAITS)
        for f in frames[frames.index(_first(frames, "WorkerThread.run")) + 1 :]
    ):
        return "worker threads: idle, waiting for work"
    if "_do_get (sqlalchemy/pool/impl.py" in joined and any(w in leaf for w in WAITS):
        return "worker threads: waiting for a pooled DB connection"
    if any(c in leaf for c in DB_CALLS):
        return "worker threads: inside a DB call (SQL, commit; incl. lock waits, round trips)"
    if "upkeep" in joined or "_snapshot (console/app.py" in joined:
        return "worker threads: upkeep"
    return "worker threads: running Python (or waiting for the GIL)"


def _first(frames: list[str], needle: str) -> str:
    return next(f for f in frames if needle in f)


def _category(frame: str) -> str:
    for label, needles in CATEGORIES:
        if any(n in frame for n in needles):
            return label
    return "other"


def _short(frame: str) -> str:
    frame = re.sub(r"\(/[^)]*?/(site-packages|lib/python3\.\d+|main)/", "(", frame)
    return frame[:110]


# --- One run -------------------------------------------------------------------------------


@dataclass
class Settings:
    duration: float
    warmup: float
    wait: int
    period: float
    flip_every: float
    generators: int
    pin: bool
    timeout: float
    kinds: tuple[str, ...] = KINDS_ALL
    workers: int = 1


class Runner:
    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.s = settings
        self.workdir = workdir
        self.rng = random.Random(20261122)

    def run(
        self,
        backend: Backend,
        nodes: int,
        *,
        profile: bool = False,
        settings: Settings | None = None,
    ) -> Step:
        saved = self.s
        self.s = settings or saved
        try:
            return self._run(backend, nodes, profile=profile)
        finally:
            self.s = saved

    def _run(self, backend: Backend, nodes: int, *, profile: bool) -> Step:
        s = self.s
        gens = s.generators or max(1, math.ceil(nodes / NODES_PER_GENERATOR))
        step = Step(backend.name, nodes, s.duration, gens, kinds=s.kinds, workers=s.workers)
        step.load_before = benchlib.loadavg()
        console = Console(backend.url, backend.workdir / "console.log", s.workers).start()
        procs: list[subprocess.Popen[bytes]] = []
        spies: list[subprocess.Popen[bytes]] = []
        window = (math.inf, math.inf)
        try:
            operator = login(console.url)
            backend.ensure_apps(operator, nodes)
            node_list = nodes_of(nodes)
            now = time.monotonic()
            launch_end = now + 1 + min(nodes / LAUNCH_RATE, LAUNCH_MAX)
            start = launch_end + s.warmup
            end = start + s.duration
            times = {"launch_end": launch_end, "start": start, "end": end}
            wall = time.time() - now
            window = (start + wall, end + wall)
            procs = self.spawn(backend, console.port, node_list, gens, times)
            if s.pin:
                self.pin(console.pid, backend, [p.pid for p in procs])
            log(
                f"{backend.name}: {nodes} nodes, {gens} generator(s); launch until "
                f"+{launch_end - now:.0f}s, window +{start - now:.0f}..+{end - now:.0f}s"
            )
            self.sleep_until(start, procs, console)
            # -1: /health did not answer within 10 s (an overloaded console).
            step.long_polls = int(console.health().get("long_polls", -1))
            step.window_start = start
            step.console_started = console.started
            mark0 = self.mark(console, backend, procs)
            if profile:
                spies = self.start_profile(console.pid, s.duration, threads=s.kinds == KINDS_ALL)
            self.window(step, console, operator, node_list, end=end, procs=procs)
            mark1 = self.mark(console, backend, procs)
            operator.close()
            self.cpu(step, mark0, mark1, procs)
            outputs = self.collect(procs)
            merge_outputs(step, outputs)
            time.sleep(3)
            step.lingering = int(console.health().get("long_polls", -1))
            for spy in spies:
                spy.wait(120)
            if spies:
                step.profile = profile_summary(self.workdir, s.duration)
        finally:
            for p in procs + spies:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            console.stop()
        step.logged = console.log_findings(window)
        step.cancelled_at_stop = step.logged.cancelled_at_stop
        step.load_after = benchlib.loadavg()
        return step

    def spawn(
        self,
        backend: Backend,
        port: int,
        node_list: list[tuple[str, str, str]],
        gens: int,
        times: dict[str, float],
    ) -> list[subprocess.Popen[bytes]]:
        """Start the load generators, each with every gens-th node."""
        procs = []
        env = {**os.environ, "SOFAMESH_BENCH_SECRET": backend.secret}
        for g in range(gens):
            spec = {
                "host": "127.0.0.1",
                "port": port,
                "key_id": backend.key_id,
                "nodes": node_list[g::gens],
                "wait": self.s.wait,
                "period": self.s.period,
                "timeout": self.s.timeout,
                "kinds": list(self.s.kinds),
                **times,
            }
            spec_path = self.workdir / f"spec-{g}.json"
            spec_path.write_text(json.dumps(spec))
            out = self.workdir / f"out-{g}.json"
            procs.append(
                subprocess.Popen([sys.executable, AGENTS_FILE, spec_path, out], env=env, cwd=REPO)
            )
        return procs

    def pin(self, console_pid: int, backend: Backend, generators: list[int]) -> None:
        """Generators on the last CPU, console (and PostgreSQL) on the others."""
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return
        server_cpus, gen_cpus = set(cpus[:-1]), {cpus[-1]}
        for pid in generators:
            os.sched_setaffinity(pid, gen_cpus)
        server = [console_pid]
        if backend.pg is not None:
            pm = backend.pg.postmaster_pid()
            server += [pm, *(c.pid for c in psutil.Process(pm).children(recursive=True))]
        for pid in server:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, server_cpus)

    def sleep_until(
        self, when: float, procs: list[subprocess.Popen[bytes]], console: Console
    ) -> None:
        while (left := when - time.monotonic()) > 0:
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"load generator exited {p.returncode} before the window")
            if console.proc is not None and console.proc.poll() is not None:
                raise RuntimeError(f"console exited {console.proc.returncode}: see its log")
            time.sleep(min(left, 0.5))

    def mark(
        self, console: Console, backend: Backend, procs: list[subprocess.Popen[bytes]]
    ) -> CpuMark:
        pg = tree_cpu(backend.pg.postmaster_pid()) if backend.pg is not None else 0.0
        return CpuMark(
            at=time.monotonic(),
            # The whole tree: with several workers they are the supervisor's children.
            console=tree_cpu(console.pid),
            postgres=pg,
            machine=machine_busy(),
            pg_sessions=backend.pg.sessions_opened(PG_DATABASE) if backend.pg else 0,
        )

    def window(
        self,
        step: Step,
        console: Console,
        operator: httpx.Client,
        node_list: list[tuple[str, str, str]],
        *,
        end: float,
        procs: list[subprocess.Popen[bytes]],
    ) -> None:
        """Sample the console's memory each second; flip a switch every few seconds."""
        proc = psutil.Process(console.pid)
        self.gen_cpu0 = [_cpu(psutil.Process(p.pid)) for p in procs]
        rss: list[float] = []
        next_flip = time.monotonic() + 1.0
        flipped: set[str] = set()
        while time.monotonic() < end - 0.5:
            with contextlib.suppress(psutil.Error):
                rss.append(tree_rss(proc))
            now = time.monotonic()
            if self.s.flip_every > 0 and now >= next_flip and now < end - 5:
                app, ip, _host = self.rng.choice(node_list)
                if ip not in flipped:
                    flipped.add(ip)
                    step.flips.append(self.flip(operator, app, ip))
                next_flip = now + self.s.flip_every
            time.sleep(max(0.0, min(1.0, end - 0.5 - time.monotonic())))
        with contextlib.suppress(psutil.Error):
            rss.append(tree_rss(proc))
            step.threads = proc.num_threads()
            step.fds = proc.num_fds()
            step.nofile = proc.rlimit(psutil.RLIMIT_NOFILE)[0]
        step.rss_peak = max(rss) if rss else 0.0
        step.rss_end = rss[-1] if rss else 0.0

    def flip(self, operator: httpx.Client, app: str, ip: str) -> Flip:
        enabled = not self.backend_hijack.get(ip, False)
        sent = time.monotonic()
        try:
            answer = operator.put(
                f"/api/v1/apps/{app}/nodes/{ip}/hijack", json={"enabled": enabled}
            )
            status = answer.status_code
        except httpx.HTTPError:
            status = 0
        answered = time.monotonic()
        if status == 200:
            self.backend_hijack[ip] = enabled
        return Flip(ip, enabled, sent, answered, status)

    def cpu(
        self,
        step: Step,
        m0: CpuMark,
        m1: CpuMark,
        procs: list[subprocess.Popen[bytes]],
    ) -> None:
        wall = m1.at - m0.at
        step.console_cpu = 100 * (m1.console - m0.console) / wall
        step.postgres_cpu = 100 * (m1.postgres - m0.postgres) / wall
        step.machine_cpu = 100 * (m1.machine - m0.machine) / wall
        step.pg_sessions = m1.pg_sessions - m0.pg_sessions
        step.generator_cpu = [
            100 * (_cpu(psutil.Process(p.pid)) - c0) / wall
            for p, c0 in zip(procs, self.gen_cpu0, strict=True)
        ]

    def collect(self, procs: list[subprocess.Popen[bytes]]) -> list[dict[str, Any]]:
        outputs = []
        for g, p in enumerate(procs):
            try:
                code = p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                raise RuntimeError("a load generator did not finish within 60 s") from None
            if code != 0:
                raise RuntimeError(f"load generator {g} exited {code}")
            outputs.append(json.loads((self.workdir / f"out-{g}.json").read_text()))
        return outputs

    def start_profile(
        self, pid: int, duration: float, *, threads: bool
    ) -> list[subprocess.Popen[bytes]]:
        """Samplers: py-spy on the thread holding the GIL (Python work), perf on every
        thread (CPU by library) and py-spy on every thread (where the worker threads wait)
        only with `threads`: those two cost about 40 % of a CPU each, too much for the
        cost runs."""
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(spy).exists():
            log("py-spy not found (.venv/bin/pip install py-spy): no profile")
            return []
        for stale in ("profile-gil.txt", "profile-all.txt", PERF):
            (self.workdir / stale).unlink(missing_ok=True)
        common = [spy, "record", "--pid", str(pid), "--duration", str(int(duration))]
        common += ["--rate", str(PROFILE_RATE), "--nonblocking", "--format", "raw"]
        procs = [
            subprocess.Popen(
                [*common, *extra, "--output", str(self.workdir / name)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for extra, name in ((("--gil",), "profile-gil.txt"), (("--idle",), "profile-all.txt"))
            if threads or name != "profile-all.txt"
        ]
        perf = shutil.which("perf")
        if perf and threads:
            # Every thread's CPU by library, the kernel included (where py-spy cannot look).
            procs.append(
                subprocess.Popen(
                    [
                        *(perf, "record", "-F", "499", "-p", str(pid)),
                        *("-o", str(self.workdir / PERF), "--", "sleep", str(int(duration))),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        return procs

    backend_hijack: dict[str, bool]
    gen_cpu0: list[float]


# --- Costs per request kind ------------------------------------------------------------------

COST_NODES = 500
COST_INTERVAL = 5  # s: 100 requests/s of the one kind at 500 nodes
COST_KINDS = (("status", ("status",)), ("metrics", ("metrics",)), ("rearm", ("poll",)))


def cost_runs(
    runner: Runner, backend: Backend, settings: Settings, *, profile: bool
) -> list[tuple[str, Step]]:
    """One kind of request alone at a moderate rate: the console's CPU per request (and,
    with `profile`, where its Python time goes)."""
    out = []
    for kind, kinds in COST_KINDS:
        alone = dataclasses.replace(
            settings,
            kinds=kinds,
            period=COST_INTERVAL,
            wait=COST_INTERVAL,
            flip_every=0,
            duration=min(settings.duration, 20.0),
            warmup=10,
        )
        log(f"{backend.name}: cost of {kind} alone ({COST_NODES} nodes)")
        step = runner.run(backend, COST_NODES, settings=alone, profile=profile)
        log(f"  {kind}: {fmt(step_cost(step, kind)[0], 2)} ms console CPU per request")
        out.append((kind, step))
    return out


def step_cost(step: Step, kind: str) -> tuple[float, float, int]:
    """Console and PostgreSQL CPU ms per answered request of `kind`, and the count."""
    count = step.lat[kind].count if kind in step.lat else 0
    if not count:
        return float("nan"), float("nan"), 0
    scale = 10 * step.duration / count  # % of a CPU over the window -> ms per request
    return step.console_cpu * scale, step.postgres_cpu * scale, count


def costs_text(outcome: Outcome, args: argparse.Namespace) -> list[str]:
    if not outcome.costs:
        return []
    profiled = any(step.profile for _k, step in outcome.costs)
    split = [label for label, _n in BUCKETS]
    rows = [
        f"Console CPU per request, each kind alone ({COST_NODES} nodes, one request of the kind "
        f"per node every {COST_INTERVAL} s, no other traffic; window "
        f"{min(args.duration, 20.0):g} s)"
        + (
            "; profiled: the console's Python time (py-spy --gil samples) split into "
            + ", ".join(split)
            + " (DB jobs = the agents' database worker thread; thread hand-offs = queue/threading "
            "leaf frames outside it; "
            "the others' CPU then includes the sampler)"
            if profiled
            else ""
        )
        + ":",
        "",
        "| backend | request | answered/s | console CPU ms per request | PostgreSQL CPU ms "
        "per request | p50 / p99 ms | console CPU % | others' CPU % |"
        + (" Python time %: " + " / ".join(split) + " |" if profiled else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if profiled else ""),
    ]
    per_node: dict[str, float] = defaultdict(float)
    rate = {"status": 1 / args.period, "metrics": 1 / args.period, "rearm": 1 / args.wait}
    for kind, step in outcome.costs:
        console, pg, count = step_cost(step, kind)
        lat = step.lat.get(kind, Lat.of([]))
        cell = ""
        if profiled:
            b = step.profile["buckets"] if step.profile else {}
            total = sum(b.values()) or math.nan
            cell = " / ".join(fmt(100 * b.get(x, math.nan) / total, 0) for x in split) + " |"
        rows.append(
            f"| {step.backend} | {KIND_LABEL[kind]} | {count / step.duration:,.0f} | "
            f"{fmt(console, 2)} | {fmt(pg, 2) if step.backend == 'postgresql' else '-'} | "
            f"{fmt(lat.p50)} / {fmt(lat.p99)} | {step.console_cpu:.0f} | "
            f"{step.others_cpu:.0f} |{cell}"
        )
        per_node[step.backend] += console * rate[kind]
    rows.append("")
    for backend, ms in per_node.items():
        if ms > 0 and not math.isnan(ms):
            rows.append(
                f"- {backend}: one node (a status and a metrics post every {args.period:g} s, a "
                f"re-arm every {args.wait} s) costs {ms:.2f} ms of console CPU per second, so "
                f"one fully busy core serves at most **{1000 / ms:,.0f} nodes** (no headroom "
                f"for queueing); {GOAL_NODES:,} nodes would need {GOAL_NODES * ms / 1000:.1f} "
                "cores of this code."
            )
    return [*rows, ""]


def gap_text(outcome: Outcome, args: argparse.Namespace) -> list[str]:
    """What would close the gap, from the measured costs and profiles (only what the
    numbers of this run support)."""
    cost: dict[str, dict[str, float]] = defaultdict(dict)
    for kind, step in outcome.costs:
        cost[step.backend][kind] = step_cost(step, kind)[0]
    out = []
    budget_goal = 1000 / GOAL_NODES  # ms of one core per node-second
    budget_target = 1000 / TARGET_NODES
    for backend, kinds in cost.items():
        per_node = (
            kinds.get("status", math.nan) / args.period
            + kinds.get("metrics", math.nan) / args.period
            + kinds.get("rearm", math.nan) / args.wait
        )
        if math.isnan(per_node):
            continue
        out.append(
            f"- {backend}: a node costs {per_node:.2f} ms of console CPU per second; one core "
            f"holds {TARGET_NODES:,} nodes only below {budget_target:.2f} ms (less, to keep "
            f"queues short) and {GOAL_NODES:,} below {budget_goal:.2f} ms: "
            f"{per_node / budget_target:.1f}x and {per_node / budget_goal:.1f}x those budgets."
        )
    churn = [
        s
        for s in outcome.base + [x for v in outcome.searched.values() for x in v]
        if s.backend == "postgresql" and s.workers == 1 and s.pg_sessions >= s.duration
    ]
    if churn:
        worst = max(churn, key=lambda s: s.pg_sessions)
        out.append(
            f"- PostgreSQL: at {worst.nodes:,} nodes the console opened {worst.pg_sessions:,} "
            f"new connections in the {worst.duration:g} s window (PostgreSQL CPU "
            f"{worst.postgres_cpu:.0f} %): more operator-side connections at once than the "
            "pool keeps (console/db.py)."
        )
    prof = next((s.profile for s in outcome.profiles if s.profile), None)
    if prof is not None:
        incl = dict(prof["inclusive"])
        b = prof["buckets"]
        total = sum(b.values()) or 1.0

        def share(label: str) -> float:
            return float(100 * b.get(label, 0.0) / total)

        cats = dict(prof["categories"])
        sqla = cats.get("SQLAlchemy core (statements, pool, rows)", 0.0) + cats.get(
            "SQLAlchemy ORM", 0.0
        )
        out.append(
            f"- Python time in the mixed run: {share('HTTP + framework'):.0f} % HTTP (uvicorn's "
            f"protocol, the event loop, ASGI plumbing), {share('DB jobs'):.0f} % the agents' "
            f"database jobs, {share('auth + validation'):.0f} % signature check and body "
            f"validation (of which pydantic + json "
            f"{incl.get('  of which pydantic + json (body validation)', 0.0):.0f} %), "
            f"{share('upkeep'):.0f} % upkeep; SQLAlchemy (operator requests, upkeep) "
            f"{sqla:.0f} % of all leaf frames. What is left is mostly uvicorn's per-request "
            "and per-connection Python and the event loop: a leaner HTTP server for the "
            "agents' few routes, or fewer requests per node (status and metrics in one "
            "post, kept-alive connections), would cut it; the database jobs come next."
        )
        dso = dict(prof.get("perf_dso", []))
        kernel = sum(v for k, v in dso.items() if "kernel" in k)
        if kernel >= 5:
            out.append(
                f"- {kernel:.0f} % of the console's CPU is in the kernel (perf): mostly the TCP "
                "work of a new connection per status+metrics cycle (uvicorn closes idle "
                f"connections after 5 s, agents post every {args.period:g} s, and httpx in the "
                "agent keeps idle connections 5 s too). A keep-alive longer than the period on "
                "both sides, or one request carrying status and metrics, would save it and "
                "the per-connection Python work in uvicorn."
            )
    if out:
        out.append(
            f"- {GOAL_NODES:,} nodes make "
            f"~{GOAL_NODES * (2 / args.period + 1 / args.wait):,.0f} requests/s and hold "
            f"{GOAL_NODES:,} long-poll connections. Past what one process's core gives, "
            "several console processes on one PostgreSQL (they share nonces, sessions and "
            "wake each other's long-polls through LISTEN/NOTIFY, like replicas) scale with "
            "cores (`SOFAMESH_CONSOLE_WORKERS`); SQLite allows one process only."
        )
        return ["What would close the gap (from the costs and profiles above):", "", *out, ""]
    return []


# --- Search --------------------------------------------------------------------------------


def max_nodes() -> int:
    """The console holds one socket per long-polling node: stay under its fd limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(1000, hard - 1500)


def search(
    runner: Runner, backend: Backend, first: Step, deadline: float
) -> tuple[list[Step], int, int | None]:
    """Steps up the ladder from the first run (or halves it down to 125 nodes), then
    bisects (1,000 nodes apart above 2,000, 250 above 500, 125 below); returns the extra
    steps, the largest passing and the smallest failing count."""
    steps: list[Step] = []
    cap = max_nodes()
    lo, hi = (first.nodes, None) if first.passed else (0, first.nodes)

    def measure(n: int) -> bool:
        log(f"{backend.name}: search step {n} nodes")
        step = runner.run(backend, n)
        steps.append(step)
        log(f"  {summary_line(step)}")
        return step.passed

    if first.passed:
        for n in (n for n in LADDER if first.nodes < n <= cap):
            if time.monotonic() > deadline:
                break
            if measure(n):
                lo = n
            else:
                hi = n
                break
    else:
        n = first.nodes // 2
        while n >= MIN_NODES and time.monotonic() < deadline:
            if measure(n):
                lo = n
                break
            hi, n = n, n // 2
    while hi is not None and time.monotonic() < deadline:
        grain = 1000 if lo >= 2000 else 250 if lo >= 500 else MIN_NODES
        if hi - lo <= grain:
            break
        mid = max(lo + grain, round((lo + hi) / 2 / grain) * grain)
        if mid >= hi:
            break
        if measure(mid):
            lo = mid
        else:
            hi = mid
    return steps, lo, hi


# --- Report --------------------------------------------------------------------------------


def fmt(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) or math.isinf(value) else f"{value:,.{digits}f}"


def summary_line(step: Step) -> str:
    p99 = " ".join(f"{k}={fmt(step.lat[k].p99)}" for k in KINDS if k in step.lat)
    return (
        f"{step.backend} {step.nodes}: p99 ms {p99}; errors {step.error_count}/"
        f"{step.request_count}; console CPU {step.console_cpu:.0f}% RSS {step.rss_peak:.0f} MB; "
        f"generators {'+'.join(f'{g:.0f}' for g in step.generator_cpu)}%; "
        f"machine {step.machine_cpu:.0f}%; {'PASS' if step.passed else 'FAIL'}"
    )


def errors_text(errors: dict[str, dict[str, int]]) -> str:
    parts = [
        f"{kind} {reason} x{n}"
        for kind, reasons in sorted(errors.items())
        for reason, n in sorted(reasons.items())
    ]
    return "; ".join(parts) if parts else "none"


def side_by_side(steps: list[Step]) -> str:
    """The main table: one column per backend."""
    head = "| | " + " | ".join(f"{s.backend}, {s.nodes:,} nodes" for s in steps) + " |"
    rows = [head, "|---|" + "---:|" * len(steps)]

    def row(label: str, cells: list[str]) -> None:
        rows.append(f"| {label} | " + " | ".join(cells) + " |")

    for kind in (*KINDS, "connect"):
        row(
            f"{KIND_LABEL[kind]} p50 / p99 / max ms",
            [
                f"{fmt(s.lat[kind].p50)} / **{fmt(s.lat[kind].p99)}** / {fmt(s.lat[kind].max)}"
                if kind in s.lat
                else "-"
                for s in steps
            ],
        )
    row(
        "requests in the window (status / metrics / re-arm) and rate",
        [
            f"{s.sent.get('status', 0):,} / {s.sent.get('metrics', 0):,} / "
            f"{s.sent.get('rearm', 0):,}; {s.request_count / s.duration:,.0f}/s"
            for s in steps
        ],
    )
    row("errors in the window", [errors_text(s.errors) for s in steps])
    row("requests over 100 ms: how they spread", [s.stalls() for s in steps])
    row("errors before the window (launch, warm-up)", [errors_text(s.early_errors) for s in steps])
    for label, fn in (
        ("long-poll wake after the switch PUT answered, p50 / max ms", 0),
        ("long-poll wake from sending the PUT, p50 / max ms", 1),
    ):
        cells = []
        for s in steps:
            wake = s.wake()
            lat: Lat = wake[fn]  # type: ignore[assignment]
            missed = f" ({wake[2]} not seen)" if wake[2] else ""
            cells.append(f"{fmt(lat.p50)} / {fmt(lat.max)} (n={lat.count}){missed}")
        row(label, cells)
    row(
        "operator switch PUT p50 / max ms",
        [f"{fmt(s.put_latency().p50)} / {fmt(s.put_latency().max)}" for s in steps],
    )
    row(
        "long-polls waiting at window start (/health)",
        [
            f"{s.long_polls:,} of {s.nodes:,}" if s.long_polls >= 0 else "no answer in 10 s"
            for s in steps
        ],
    )
    row(
        "long-polls still held 3 s after every agent closed its connections / cancelled at stop",
        [
            f"{s.lingering:,} / {s.cancelled_at_stop:,}"
            if s.lingering >= 0
            else f"no answer / {s.cancelled_at_stop:,}"
            for s in steps
        ],
    )
    for kind in ("register", "config_initial"):
        row(
            f"{KIND_LABEL[kind]} p50 / p99 ms",
            [
                f"{fmt(s.lat[kind].p50)} / {fmt(s.lat[kind].p99)}" if kind in s.lat else "-"
                for s in steps
            ],
        )
    row("console CPU (% of one CPU)", [f"**{s.console_cpu:.0f}**" for s in steps])
    row("console CPU ms per request answered", [fmt(s.cpu_per_request, 2) for s in steps])
    row(
        "console RSS peak / end MB",
        [f"**{s.rss_peak:.0f}** / {s.rss_end:.0f}" for s in steps],
    )
    row(
        "console threads / open fds / fd limit",
        [f"{s.threads} / {s.fds:,} / {s.nofile:,}" for s in steps],
    )
    row(
        "PostgreSQL CPU % / connections the console opened in the window",
        [
            f"{s.postgres_cpu:.0f} / {s.pg_sessions:,}" if s.backend == "postgresql" else "-"
            for s in steps
        ],
    )
    row(
        "load generator CPU % (per process)",
        ["+".join(f"{g:.0f}" for g in s.generator_cpu) for s in steps],
    )
    row(
        "generator event-loop lateness p99 / max ms",
        [f"{fmt(s.lag.p99)} / {fmt(s.lag.max)}" for s in steps],
    )
    row("other processes' CPU %", [f"{s.others_cpu:.0f}" for s in steps])
    row("machine CPU busy % (of 200)", [f"{s.machine_cpu:.0f}" for s in steps])
    row("load average before / after", [f"{s.load_before} / {s.load_after}" for s in steps])
    row(
        f"all three p99 < {TARGET_MS:.0f} ms, errors <= {MAX_ERROR_RATE:.1%}",
        [
            f"{'met' if s.passed else '**not met**'} (worst p99 {fmt(s.worst_p99)} ms)"
            for s in steps
        ],
    )
    return "\n".join(rows)


def search_table(steps: list[Step]) -> str:
    rows = [
        "| backend | processes | nodes | req/s | status p99 ms | metrics p99 ms | re-arm p99 ms "
        "| errors | console CPU % | CPU ms/req | RSS MB | generators CPU % | others' CPU % | "
        "PostgreSQL CPU % / new connections | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in sorted(steps, key=lambda x: (x.backend, x.workers, x.nodes)):
        rows.append(
            f"| {s.backend} | {s.workers} | {s.nodes:,} | {s.request_count / s.duration:,.0f} | "
            + " | ".join(fmt(s.lat[k].p99) if k in s.lat else "-" for k in KINDS)
            + f" | {s.error_count} | {s.console_cpu:.0f} | {fmt(s.cpu_per_request, 2)} | "
            f"{s.rss_peak:.0f} | "
            f"{'+'.join(f'{g:.0f}' for g in s.generator_cpu)} | {s.others_cpu:.0f} | "
            + (f"{s.postgres_cpu:.0f} / {s.pg_sessions:,}" if s.backend == "postgresql" else "-")
            + f" | {'pass' if s.passed else 'fail'} |"
        )
    return "\n".join(rows)


def profile_text(step: Step) -> str:
    p = step.profile
    assert p is not None
    lines = [
        f"Profile of the console, {step.backend} at {step.nodes:,} nodes, a separate "
        f"{p['seconds']:.0f} s run (py-spy record --nonblocking, {PROFILE_RATE} Hz; its own "
        f"numbers: {summary_line(step)}).",
        "",
        f"Some thread held the GIL in {100 * p['gil_busy']:.0f} % of the samples. Where that "
        f"Python time goes ({p['samples']:,} samples with --gil; % of them):",
        "",
        "| leaf frame in | % |  | inclusive: inside | % |",
        "|---|---:|---|---|---:|",
    ]
    cats = p["categories"]
    incl = p["inclusive"]
    for i in range(max(len(cats), len(incl))):
        c = cats[i] if i < len(cats) else ("", None)
        n = incl[i] if i < len(incl) else ("", None)
        lines.append(
            f"| {c[0]} | {'' if c[1] is None else f'{c[1]:.1f}'} | | {n[0]} | "
            f"{'' if n[1] is None else f'{n[1]:.1f}'} |"
        )
    lines += [
        "",
        "Top leaf functions: " + "; ".join(f"`{k}` {v:.1f} %" for k, v in p["leaves"][:8]),
        "",
        "What the console's threads were doing (py-spy --idle, every thread; average number "
        "of threads in each state): " + "; ".join(f"{k} {v:.1f}" for k, v in p["threads"]),
    ]
    if p.get("perf_dso"):
        lines += [
            "",
            "All of the console's CPU by library (perf record -F 499, every thread, kernel "
            "included): "
            + "; ".join(f"{name} {pct:.1f} %" for name, pct in p["perf_dso"][:9])
            + ". Top symbols: "
            + "; ".join(f"`{name}` {pct:.1f} %" for name, pct in p["perf_sym"][:8]),
        ]
    return "\n".join(lines)


def versions() -> dict[str, str]:
    out = {}
    for name in ("fastapi", "starlette", "uvicorn", "SQLAlchemy", "psycopg", "pydantic", "uvloop"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["SQLite"] = sqlite3.sqlite_version
    return out


@dataclass
class Outcome:
    base: list[Step] = field(default_factory=list)
    searched: dict[str, list[Step]] = field(default_factory=dict)
    best: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    profiles: list[Step] = field(default_factory=list)
    costs: list[tuple[str, Step]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    # PostgreSQL with several console worker processes (--workers-extra).
    extra: list[Step] = field(default_factory=list)


def verdicts(outcome: Outcome, args: argparse.Namespace) -> list[str]:
    lines = []
    for s in outcome.base:
        if s.nodes == TARGET_NODES:
            lines.append(
                f"- Target p99 < {TARGET_MS:.0f} ms at {TARGET_NODES:,} nodes, {s.backend}: "
                + (
                    f"**met** (worst p99 {fmt(s.worst_p99)} ms, {s.error_count} errors)"
                    if s.passed
                    else f"**not met** (worst p99 {fmt(s.worst_p99)} ms, {s.error_count} errors)"
                )
            )
        else:
            lines.append(
                f"- Target p99 < {TARGET_MS:.0f} ms at {TARGET_NODES:,} nodes, {s.backend}: not "
                f"measured (this run used {s.nodes:,} nodes: worst p99 {fmt(s.worst_p99)} ms)"
            )
    for backend, (lo, hi) in outcome.best.items():
        limit = f"; {hi:,} nodes failed" if hi else ""
        found = (
            f"the largest node count measured with every p99 < {TARGET_MS:.0f} ms is "
            f"**{lo:,}**{limit}"
            if lo
            else f"no node count measured passed, down to **{hi:,}** nodes"
        )
        lines.append(
            f"- Goal {GOAL_NODES:,} nodes, {backend}: "
            + ("**met**" if lo >= GOAL_NODES else "**not met**")
            + f": {found}"
        )
    if not outcome.best:
        lines.append(f"- Goal {GOAL_NODES:,} nodes: not searched in this run (--search)")
    return lines


def limits_text(outcome: Outcome) -> list[str]:
    lines = []
    for backend, steps in outcome.searched.items():
        failed = sorted((s for s in steps if not s.passed), key=lambda s: s.nodes)
        first_fail = failed[0] if failed else None
        if first_fail is None:
            continue
        found = first_fail.limits() or ["nothing obvious in CPU, fds or the logs"]
        lines.append(f"- {backend} at {first_fail.nodes:,} nodes: " + "; ".join(found))
    for s in outcome.base:
        if not s.passed:
            found = s.limits() or ["nothing obvious in CPU, fds or the logs"]
            lines.append(f"- {s.backend} at {s.nodes:,} nodes: " + "; ".join(found))
    return lines


def report(args: argparse.Namespace, outcome: Outcome, facts: dict[str, str]) -> str:
    command = ".venv/bin/python bench/console_load.py" + (
        " " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""
    )
    pkgs = ", ".join(f"{k} {v}" for k, v in versions().items())
    steps_all = outcome.base + [s for v in outcome.searched.values() for s in v]
    gens = sorted({s.generators for s in steps_all})
    parts = [
        SECTION_BEGIN,
        "## Console load (bench/console_load.py)",
        "",
        f"Command: `{command}`",
        "",
        f"Date: {facts['date']}. Machine: {facts['nproc']} CPUs ({facts['cpu']}), kernel "
        f"{facts['kernel']}, Python {facts['python']}; {pkgs}; PostgreSQL "
        f"{facts['postgresql']}. Load average at start: {facts['load_before']}. "
        f"ulimit -n (soft/hard) {'/'.join(map(str, resource.getrlimit(resource.RLIMIT_NOFILE)))}. "
        "Other engineers' work shared the machine (the 'other processes' row shows how much).",
        "",
        f"Set-up: one console process (`python -m agent console serve`, uvicorn + uvloop, "
        f"access log on, as shipped) on 127.0.0.1; apps of {NODES_PER_APP:,} nodes (node IPs "
        "from 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) made through the admin CLI and "
        f"operator API; one access key for all agents. Each simulated node: register, fetch "
        f"its config, long-poll it with wait={args.wait} s (own keep-alive connection), and "
        f"every {args.period:g} s +-10 % a status post then a metrics post (2 port rows) on a "
        f"fresh connection (uvicorn closes idle connections after 5 s). Launch at "
        f"{LAUNCH_RATE:.0f} nodes/s (at most {LAUNCH_MAX:.0f} s), warm-up {args.warmup:g} s, "
        f"measured window {args.duration:g} s. Load generator: bench/console_load_agents.py "
        "(asyncio + uvloop, "
        f"a minimal HTTP/1.1 client, signing with agent.console_client.sign_headers), "
        f"{'/'.join(map(str, gens))} process(es); "
        + (
            "pinned: generators on the last CPU, console and PostgreSQL on the others. "
            if args.pin
            else "not pinned: everything shares both CPUs, and each party's CPU is reported. "
        )
        + "A switch flip (operator PUT) every "
        f"{args.flip_every:g} s during the window times the long-poll wake-up (from sending "
        "the PUT: the console wakes the poll at commit, a little before it answers the PUT, "
        "so the time after the answer can be negative). Status latency includes the TCP "
        "connect of the cycle's fresh connection (also shown alone). Re-arm latency = the "
        "304's time minus `wait` (the console starts the wait after checking the signature "
        "and finding the node, and reads the document once more when it ends). "
        "PostgreSQL: a throw-away cluster on a unix socket, "
        + ", ".join(PgCluster.SETTINGS)
        + "; SQLite: WAL, synchronous=NORMAL (the console's own settings).",
        "",
    ]
    if outcome.base:
        parts += [side_by_side(outcome.base), ""]
    if outcome.searched:
        every = [s for v in outcome.searched.values() for s in v]
        base = [s for s in outcome.base if s.backend in outcome.searched]
        parts += [
            f"Search for the largest node count with every p99 < {TARGET_MS:.0f} ms (one run "
            "per count, same settings):",
            "",
            search_table(base + every),
            "",
        ]
    if outcome.extra:
        parts += [
            f"Several console processes on one PostgreSQL (uvicorn workers, "
            f"SOFAMESH_CONSOLE_WORKERS={outcome.extra[0].workers}; the issue asks what ONE "
            "process holds: this is what more processes on the same 2 CPUs add):",
            "",
            search_table(outcome.extra),
            "",
        ]
    parts += ["Verdict:", "", *verdicts(outcome, args), ""]
    lim = limits_text(outcome)
    if lim:
        parts += ["What the failing runs point at (from the numbers above):", "", *lim, ""]
    parts += costs_text(outcome, args)
    for step in outcome.profiles:
        if step.profile is not None:
            parts += [profile_text(step), ""]
    parts += gap_text(outcome, args)
    notes = []
    for s in steps_all + outcome.profiles + [c for _k, c in outcome.costs]:
        text = s.logged.text()
        if text:
            what = "" if s.kinds == KINDS_ALL else f" ({'+'.join(s.kinds)} alone)"
            notes.append(f"- {s.backend} at {s.nodes:,} nodes{what}: {text}")
    if notes:
        parts += ["Console log findings:", "", *notes, ""]
    if outcome.skipped:
        parts += ["Skipped: " + "; ".join(outcome.skipped), ""]
    if args.note:
        parts += [args.note, ""]
    parts.append(SECTION_END)
    return "\n".join(parts)


# --- Main ----------------------------------------------------------------------------------


@contextlib.contextmanager
def backend_for(name: str, base: Path) -> Iterator[Backend | None]:
    workdir = base / name
    workdir.mkdir()
    if name == "sqlite":
        backend = Backend(name, f"sqlite:///{workdir / 'console.db'}", workdir)
    else:
        bindir = pg_bindir()
        if bindir is None:
            yield None
            return
        pg_base = Path(tempfile.mkdtemp(prefix="sofamesh-loadpg-"))
        pg = PgCluster(pg_base, bindir)
        pg.start()
        backend = Backend(name, pg.create_database(PG_DATABASE), workdir, pg=pg)
    try:
        backend.provision()
        yield backend
    finally:
        backend.stop()
        if backend.pg is not None:
            shutil.rmtree(backend.pg.base, ignore_errors=True)


def run(args: argparse.Namespace) -> Outcome:
    settings = Settings(
        duration=args.duration,
        warmup=args.warmup,
        wait=args.wait,
        period=args.period,
        flip_every=args.flip_every,
        generators=args.generators,
        pin=args.pin,
        timeout=args.timeout,
    )
    outcome = Outcome()
    base = Path(tempfile.mkdtemp(prefix="sofamesh-load-"))
    deadline = time.monotonic() + args.budget * 60
    names = args.db
    try:
        for i, name in enumerate(names):
            with backend_for(name, base) as backend:
                if backend is None:
                    outcome.skipped.append(f"{name}: no initdb (apt-get install postgresql)")
                    log(outcome.skipped[-1])
                    continue
                runner = Runner(settings, base / name)
                runner.backend_hijack = backend.hijack
                step = runner.run(backend, args.nodes)
                log(summary_line(step))
                outcome.base.append(step)
                if args.search:
                    share = time.monotonic() + (deadline - time.monotonic()) / (len(names) - i)
                    steps, lo, hi = search(runner, backend, step, share)
                    outcome.searched[name] = steps
                    outcome.best[name] = (lo, hi)
                if args.workers_extra > 1 and name == "postgresql":
                    outcome.extra += workers_runs(runner, backend, settings, args, outcome)
                if args.costs:
                    outcome.costs += cost_runs(runner, backend, settings, profile=args.profile)
                if args.profile:
                    log(f"{name}: profiled run at {args.nodes} nodes")
                    saved = settings.duration
                    settings.duration = min(saved, 30.0)
                    prof = runner.run(backend, args.nodes, profile=True)
                    settings.duration = saved
                    log(summary_line(prof))
                    outcome.profiles.append(prof)
    finally:
        if args.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return outcome


def workers_runs(
    runner: Runner,
    backend: Backend,
    settings: Settings,
    args: argparse.Namespace,
    outcome: Outcome,
) -> list[Step]:
    """Several console processes on PostgreSQL (not what the issue asks, which is one
    process; what they add): at twice the largest count one process passed (or at
    --nodes), then one ladder step up if that passes."""
    lo, _hi = outcome.best.get(backend.name, (0, None))
    first = max(lo * 2, args.nodes) if lo else args.nodes
    many = dataclasses.replace(settings, workers=args.workers_extra)
    steps = []
    for n in (first, *(n for n in LADDER if n > first)):
        if n > max_nodes():
            break
        log(f"{backend.name}: {args.workers_extra} console processes, {n} nodes")
        step = runner.run(backend, n, settings=many)
        log(f"  {summary_line(step)}")
        steps.append(step)
        if not step.passed or len(steps) >= 2:
            break
    return steps


def raw_dump(outcome: Outcome) -> dict[str, Any]:
    def step(s: Step) -> dict[str, Any]:
        d = {k: v for k, v in s.__dict__.items() if k not in ("lat", "flips", "lag", "logged")}
        d["logged"] = s.logged.text()
        d["lat"] = {k: v.__dict__ for k, v in s.lat.items()}
        d["lag"] = s.lag.__dict__
        d["flips"] = [f.__dict__ for f in s.flips]
        d["passed"] = s.passed
        return d

    return {
        "base": [step(s) for s in outcome.base],
        "extra": [step(s) for s in outcome.extra],
        "searched": {k: [step(s) for s in v] for k, v in outcome.searched.items()},
        "best": outcome.best,
        "profiles": [step(s) for s in outcome.profiles],
        "costs": [(kind, step(s)) for kind, s in outcome.costs],
    }


def _dbs(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or any(n not in ("sqlite", "postgresql") for n in names):
        raise argparse.ArgumentTypeError("expected sqlite, postgresql or sqlite,postgresql")
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/console_load.py", description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=TARGET_NODES, help="simulated nodes (2000)")
    p.add_argument("--search", action="store_true", help="find the largest passing node count")
    p.add_argument("--duration", type=float, default=60, help="measured window, s (60)")
    p.add_argument("--warmup", type=float, default=20, help="after the launch, s (20)")
    p.add_argument("--db", type=_dbs, default=["sqlite", "postgresql"], help="sqlite,postgresql")
    p.add_argument("--wait", type=int, default=30, help="long-poll wait, s (30)")
    p.add_argument("--period", type=float, default=10, help="status+metrics period, s (10)")
    p.add_argument("--flip-every", type=float, default=5, help="switch flip interval, s (5)")
    p.add_argument("--generators", type=int, default=0, help="processes (0: 1 per 5,000 nodes)")
    p.add_argument("--pin", action="store_true", help="generators on the last CPU, rest apart")
    p.add_argument("--timeout", type=float, default=30, help="client timeout per request, s")
    p.add_argument("--profile", action="store_true", help="an extra 30 s run under py-spy")
    p.add_argument("--costs", action="store_true", help="CPU per request, each kind alone")
    p.add_argument(
        "--workers-extra",
        type=int,
        default=0,
        help="also run PostgreSQL with this many console processes (0: no)",
    )
    p.add_argument("--budget", type=float, default=60, help="minutes for --search (60)")
    p.add_argument("--quick", action="store_true", help="smoke check: 200 nodes, short")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, DBs)")
    p.add_argument("--raw", type=Path, help="write every step's numbers to this JSON file")
    p.add_argument("--note", default="", help="a note for the results section")
    p.add_argument("--write-results", action="store_true", help="update bench/RESULTS.md")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: the console, the generators and PostgreSQL get stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.quick:
        args.nodes, args.duration, args.warmup, args.wait, args.flip_every = 200, 12, 4, 8, 3
    if args.nodes < 1 or args.nodes > max_nodes():
        parser().error(f"--nodes must be within 1..{max_nodes()} (fd limit)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        # The console inherits it: one socket per long-polling node.
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    bindir = pg_bindir()
    facts = benchlib.machine_facts({})
    facts["postgresql"] = (
        benchlib.package_version(f"postgresql-{bindir.parent.name}") if bindir else "not installed"
    )
    outcome = run(args)
    for s in outcome.base + [s for v in outcome.searched.values() for s in v]:
        print(summary_line(s))
    for backend, (lo, hi) in outcome.best.items():
        print(f"{backend}: largest passing {lo}, smallest failing {hi}")
    if args.raw:
        args.raw.write_text(json.dumps(raw_dump(outcome), indent=1, default=str))
    section = report(args, outcome, facts)
    print(section)
    if args.write_results:
        benchlib.replace_section(SECTION_BEGIN, SECTION_END, section)
        log(f"wrote {benchlib.RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
