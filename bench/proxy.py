"""What does a hop through the sofamesh sidecar cost? (R-SC-2, R-SC-3, R-SC-6)

Measures, in one run with interleaved rounds (the median of each cell is reported):

- direct: client -> nginx on the node (port 9090, excluded from interception);
- sofamesh: client -> node:8080, redirected by the iptables backend to the sidecar's inbound
  listener, sidecar -> nginx; with 1 and 2 workers (--workers);
- haproxy: client -> node:9191/9192 (excluded from interception), Debian's haproxy as an L7
  HTTP reverse proxy with keep-alive upstream (`http-reuse always`), nbthread 1 and 2 to
  match the worker counts. haproxy gets the traffic without interception: it isolates the
  proxy's own cost from the NAT redirect's, so the comparison slightly favours it.

For each: keep-alive and new-connection-per-request throughput with latency percentiles
(wrk -t1 -c16 --latency); latency at a fixed 1,000 requests/s over 16 keep-alive
connections (bench/proxy_client.py, an open-loop generator: Debian has no wrk2) and the
proxy's CPU time during it; the proxy's RSS idle and while 1,000 keep-alive connections are
open; and for the sidecar the cost of the max-requests gate (a limit of 2147483647 on the
app port vs no limit).

Everything runs inside netlab namespace VMs: a `node` VM (nginx, the proxies, the iptables
rules) and a `client` VM (wrk and the Python clients). Nothing touches this host's own
network namespace.

    .venv/bin/python bench/proxy.py [--rounds 3] [--duration 5] [--workers 1,2] [--quick]
        [--write-results]

Needs root and the Debian packages wrk, nginx (or nginx-light) and haproxy (besides what
scripts/dev.sh installs).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import resource
import select
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib
import psutil

REPO = Path(__file__).resolve().parent.parent
RESULTS_FILE = REPO / "bench" / "RESULTS.md"
CLIENT_FILE = Path(__file__).resolve().parent / "proxy_client.py"
SECTION_BEGIN = "<!-- proxy:begin -->"
SECTION_END = "<!-- proxy:end -->"

PROXY_UID = 1337  # the rules take the number; no passwd entry needed
APP_PORT = 8080  # intercepted inbound: the sidecar's path
DIRECT_PORT = 9090  # the same nginx, excluded from interception
HAPROXY_PORTS = {1: 9191, 2: 9192}  # nbthread -> listening port, excluded from interception
ADMIN_PORT = 15000
INBOUND_PORT = 15006
MAX_LIMIT = 2147483647
CONNECTIONS = 16
FIXED_RATE = 1000
HOLD_CONNECTIONS = 1000
WARMUP_SECONDS = 1
NOFILE = 65536
BUDGET_SECONDS = 45 * 60  # hard stop between rounds; the default run takes about 10 minutes
REQUIRED = (("wrk", "wrk"), ("nginx", "nginx"), ("haproxy", "haproxy"))
MB = 1024 * 1024

# The targets.
TARGET_KA = 0.45  # keep-alive throughput through interception >= 0.45 x direct
TARGET_CLOSE = 0.30  # new connection per request >= 0.30 x direct
TARGET_ADDED_P50 = 0.2  # ms added per hop at 1,000 rps
TARGET_ADDED_P99 = 1.0
TARGET_CPU = 0.05  # vCPU per 1,000 rps
TARGET_RSS_IDLE = 30.0  # MB
TARGET_RSS_HELD = 40.0  # MB at 1,000 connections
TARGET_GATE = 0.03  # the max-requests gate costs at most 3 % throughput

NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen {app};
        listen {direct};
        location / {{
            root {dir}/www;
        }}
    }}
}}
"""

HAPROXY_CONF = """\
global
    nbthread {threads}
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    option http-keep-alive

frontend bench
    bind 0.0.0.0:{port}
    default_backend app

backend app
    http-reuse always
    server nginx 127.0.0.1:{app}
"""

# Runs inside the node VM: one admin API call, prints the status and the body.
ADMIN_CALL = """\
import sys, urllib.error, urllib.request
data = b"" if sys.argv[1] == "POST" else None
req = urllib.request.Request(sys.argv[2], method=sys.argv[1], data=data)
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode())
"""


# -- samples -----------------------------------------------------------------------------


@dataclass
class WrkSample:
    rps: float
    requests: int
    errors: int
    p50: float  # ms
    p90: float
    p99: float
    proxy_cpu_s: float = 0.0

    @property
    def cpu_us_per_request(self) -> float:
        return 1e6 * self.proxy_cpu_s / self.requests if self.requests else float("nan")


@dataclass
class RateSample:
    achieved: float
    requests: int
    errors: int
    late: int
    service: dict[str, float]  # percentile -> ms
    corrected: dict[str, float]
    proxy_cpu_s: float = 0.0

    @property
    def vcpu_per_krps(self) -> float:
        """vCPU-seconds per second divided by (rps / 1000) = CPU seconds per 1,000 requests."""
        return 1000 * self.proxy_cpu_s / self.requests if self.requests else float("nan")


@dataclass
class MemSample:
    rss_idle: float  # MB, summed over the proxy's processes
    pss_idle: float
    rss_held: float = float("nan")
    pss_held: float = float("nan")
    held: int = 0
    active_seen: int = -1  # the sidecar's own count of open connections while held


@dataclass
class Cell:
    """Every sample of one configuration, one per round."""

    ka: list[WrkSample] = field(default_factory=list)
    ka_limit: list[WrkSample] = field(default_factory=list)
    close: list[WrkSample] = field(default_factory=list)
    rate: list[RateSample] = field(default_factory=list)
    mem: list[MemSample] = field(default_factory=list)


@dataclass
class Results:
    cells: dict[str, Cell] = field(default_factory=lambda: defaultdict(Cell))
    problems: list[str] = field(default_factory=list)
    rounds_done: int = 0
    kept_logs: str = ""


# -- the lab -----------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, lab: Any, workdir: Path) -> None:
        self.args = args
        self.lab = lab
        self.node = lab["node"]
        self.client = lab["client"]
        self.workdir = workdir
        self.results = Results()
        self.sidecar_conf = workdir / "sidecar.json"
        self._logs: dict[str, Path] = {}

    # -- set-up

    def start_app(self, stack: ExitStack) -> None:
        for vm in (self.node, self.client):
            # Many short connections per second in the close runs: reuse TIME_WAIT ports as a
            # busy host would (the default allows it only for loopback).
            vm.run(["sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1"])
        www = self.workdir / "www"
        www.mkdir()
        (www / "a.txt").write_bytes(b"x" * 1024)
        conf = self.workdir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=self.workdir, app=APP_PORT, direct=DIRECT_PORT))
        out = stack.enter_context((self.workdir / "nginx.out").open("w"))
        proc = self.node.spawn(
            ["nginx", "-p", str(self.workdir), "-c", str(conf)], stdout=out, stderr=out
        )
        self.node.wait_for_port(APP_PORT, host=None, process=proc)
        self.node.wait_for_port(DIRECT_PORT, host=None, process=proc)
        hijack = self.workdir / "hijack.json"
        hijack.write_text(
            json.dumps(
                {
                    "proxy": {"user": PROXY_UID},
                    "inbound": {"exclude_ports": [DIRECT_PORT, *HAPROXY_PORTS.values()]},
                }
            )
        )
        argv = [sys.executable, "-m", "agent", "--root", str(self.workdir / "root")]
        argv += ["hijack", "apply", "--backend", "iptables", "--config", str(hijack)]
        self.node.run(argv, timeout=120)
        self.check_body(DIRECT_PORT, "direct")

    def check_body(self, port: int, what: str) -> None:
        """One request by hand: 200 and the 1 KB file."""
        got = self.client.probe_connect(
            self.node.ipv4, port, send=f"GET /a.txt HTTP/1.0\r\nHost: {self.node.ipv4}\r\n\r\n"
        )
        raw = str(got.get("raw", ""))
        if " 200 " not in raw.split("\n", 1)[0] or "x" * 1024 not in raw:
            raise RuntimeError(f"{what}: {self.node.ipv4}:{port} did not serve the file: {got}")

    # -- proxies

    def start_sidecar(self, workers: int, *, limit: bool = False) -> subprocess.Popen[str]:
        self.write_sidecar_conf(workers, limit=limit)
        log_path = self.workdir / f"sidecar-w{workers}-r{self.results.rounds_done + 1}.log"
        self._logs[f"sofamesh w{workers} round {self.results.rounds_done + 1}"] = log_path
        # As many descriptors as this process may have (the bench raised its own limit).
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        cmd = f"ulimit -n {nofile}; exec {shlex.join(self.sidecar_argv())}"
        with log_path.open("w") as err:
            proc: subprocess.Popen[str] = self.node.spawn(
                ["sh", "-c", cmd], user=PROXY_UID, stdout=subprocess.DEVNULL, stderr=err
            )
        self.node.wait_for_port(ADMIN_PORT, process=proc)
        self.node.wait_for_port(INBOUND_PORT, host=None, process=proc)
        for _ in range(100):
            status, _ = self.admin("GET", "/ready")
            if status == 200:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"sidecar w{workers} never became ready; see {log_path}")
        stats = self.sidecar_stats()
        if stats["workers"] != workers:
            raise RuntimeError(f"sidecar says {stats['workers']} workers, expected {workers}")
        # nsenter and sh exec: the pid is the sidecar's own python; with N > 1 workers its
        # children are the N workers (the CPU and memory sums cover exactly these).
        tree = _tree(proc.pid)
        comm = tree[0].name()
        expected = 1 if workers == 1 else workers + 1
        if not comm.startswith("python") or len(tree) != expected:
            raise RuntimeError(
                f"sidecar w{workers}: expected {expected} python process(es) at pid "
                f"{proc.pid}, found {[(p.pid, p.name()) for p in tree]}"
            )
        return proc

    def sidecar_argv(self) -> list[str]:
        return [sys.executable, "-m", "agent", "sidecar", "run", "--config", str(self.sidecar_conf)]

    def write_sidecar_conf(self, workers: int, *, limit: bool) -> None:
        doc: dict[str, Any] = {"workers": workers}
        if limit:
            doc["limits"] = {str(APP_PORT): MAX_LIMIT}
        self.sidecar_conf.write_text(json.dumps(doc))
        self.sidecar_conf.chmod(0o644)

    def reload_sidecar(self, workers: int, *, limit: bool) -> None:
        self.write_sidecar_conf(workers, limit=limit)
        status, body = self.admin("POST", "/reload")
        if status != 200:
            raise RuntimeError(f"sidecar reload failed: {status} {body}")
        _, body = self.admin("GET", "/config")
        limits = json.loads(body)["config"]["limits"]
        want = {str(APP_PORT): MAX_LIMIT} if limit else {}
        if limits != want:
            raise RuntimeError(f"sidecar reloaded limits {limits}, expected {want}")

    def stop_sidecar(self, proc: subprocess.Popen[str], workers: int) -> None:
        self.node.stop(proc, timeout=30)
        key = f"sofamesh w{workers} round {self.results.rounds_done + 1}"
        text = self._logs[key].read_text(errors="replace")
        bad = [
            line
            for line in text.splitlines()
            if re.search(r"\b(ERROR|FATAL|CRITICAL|Traceback)\b", line)
        ]
        if proc.returncode != 0 or bad:
            self.problem(
                f"{key}: exit status {proc.returncode}; stderr ({self._logs[key]}):\n"
                + "\n".join(bad[:20] or text.splitlines()[-20:])
            )

    def start_haproxy(self, threads: int) -> subprocess.Popen[str]:
        conf = self.workdir / f"haproxy-{threads}.cfg"
        conf.write_text(
            HAPROXY_CONF.format(threads=threads, port=HAPROXY_PORTS[threads], app=APP_PORT)
        )
        conf.chmod(0o644)
        log_path = self.workdir / f"haproxy-{threads}-r{self.results.rounds_done + 1}.log"
        with log_path.open("w") as err:
            proc: subprocess.Popen[str] = self.node.spawn(
                ["haproxy", "-f", str(conf), "-db"],
                user=PROXY_UID,
                stdout=err,
                stderr=subprocess.STDOUT,
            )
        try:
            self.node.wait_for_port(HAPROXY_PORTS[threads], host=None, process=proc)
        except Exception as exc:
            raise RuntimeError(f"haproxy did not start: {log_path.read_text()}") from exc
        comm = Path(f"/proc/{proc.pid}/comm").read_text().strip()
        if comm != "haproxy":  # nsenter execs: the pid must be haproxy's own
            raise RuntimeError(f"expected haproxy at pid {proc.pid}, found {comm!r}")
        self.check_body(HAPROXY_PORTS[threads], f"haproxy nbthread {threads}")
        return proc

    def admin(self, method: str, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{ADMIN_PORT}{path}"
        done = self.node.run([sys.executable, "-P", "-c", ADMIN_CALL, method, url], timeout=30)
        status, _, body = done.stdout.partition("\n")
        return int(status), body

    def sidecar_stats(self) -> dict[str, Any]:
        status, body = self.admin("GET", "/stats")
        if status != 200:
            raise RuntimeError(f"sidecar /stats answered {status}: {body}")
        stats: dict[str, Any] = json.loads(body)
        return stats

    def inbound_counters(self) -> dict[str, int]:
        for port in self.sidecar_stats()["ports"]:
            if port["direction"] == "inbound" and port["port"] == APP_PORT:
                return {
                    "requests": int(port["requests_total"]),
                    "active": int(port["active_connections"]),
                    "rejected": int(port["limit_rejections"]),
                    "5xx": int(port["responses"]["5xx"]),
                    "errors": sum(int(v) for v in port["errors"].values()),
                }
        return {"requests": 0, "active": 0, "rejected": 0, "5xx": 0, "errors": 0}

    # -- load

    def wrk(self, port: int, *, close: bool, duration: float, pid: int | None) -> WrkSample:
        argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration:g}s", "--latency"]
        if close:
            argv += ["-H", "Connection: close"]
        argv.append(f"http://{self.node.ipv4}:{port}/a.txt")
        before = tree_cpu(pid)
        done = self.client.run(argv, timeout=duration + 60)
        sample = parse_wrk(done.stdout)
        sample.proxy_cpu_s = tree_cpu(pid) - before
        return sample

    def fixed_rate(self, port: int, pid: int | None) -> RateSample:
        argv = [sys.executable, "-P", str(CLIENT_FILE), "rate", self.node.ipv4, str(port)]
        argv += ["--rate", str(FIXED_RATE), "--connections", str(CONNECTIONS)]
        argv += ["--duration", f"{self.args.rate_duration:g}", "--warmup", str(WARMUP_SECONDS)]
        before = tree_cpu(pid)
        done = self.client.run(argv, timeout=self.args.rate_duration + 90)
        cpu = tree_cpu(pid) - before
        out = json.loads(done.stdout.strip().splitlines()[-1])
        if out["error_samples"]:
            self.problem(f"fixed-rate run to port {port}: {out['error_samples']}")
        return RateSample(
            achieved=float(out["achieved_rps"]),
            requests=int(out["requests_total"]),
            errors=int(out["errors"]) + int(out["non200"]),
            late=int(out["late"]),
            service={k: float(v) for k, v in out["service_ms"].items()},
            corrected={k: float(v) for k, v in out["corrected_ms"].items()},
            proxy_cpu_s=cpu,
        )

    def hold(self, port: int, pid: int, mem: MemSample, *, sidecar: bool) -> None:
        """Open HOLD_CONNECTIONS keep-alive connections, read the proxy's memory, close."""
        argv = [sys.executable, "-P", str(CLIENT_FILE), "hold", self.node.ipv4, str(port)]
        argv += ["--connections", str(HOLD_CONNECTIONS)]
        proc = self.client.spawn(argv, stdin=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None and proc.stdin is not None
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        line = proc.stdout.readline() if ready else ""
        match = re.match(r"held (\d+) bad (\d+)", line)
        if match is None:
            _, out = self.client.stop(proc)
            raise RuntimeError(f"hold client on port {port} failed: {line}{out}")
        time.sleep(0.5)  # let the proxy finish whatever the last responses started
        mem.rss_held, mem.pss_held = tree_memory(pid)
        mem.held = int(match[1]) - int(match[2])
        if sidecar:
            mem.active_seen = self.inbound_counters()["active"]
            if mem.active_seen < mem.held:
                self.problem(
                    f"hold on port {port}: {mem.held} connections open, but the sidecar "
                    f"counts {mem.active_seen} active"
                )
        proc.stdin.write("done\n")
        proc.stdin.flush()
        proc.wait(timeout=30)
        self.client.stop(proc)
        if int(match[2]):
            self.problem(f"hold on port {port}: {match[2]} of {match[1]} requests failed")

    # -- groups: one configuration, measured once per round

    def run_direct(self, rnd: int) -> None:
        cell = self.results.cells["direct"]
        self.wrk(DIRECT_PORT, close=False, duration=WARMUP_SECONDS, pid=None)
        cell.ka.append(self.checked_wrk("direct", DIRECT_PORT, close=False, pid=None))
        cell.close.append(self.checked_wrk("direct", DIRECT_PORT, close=True, pid=None))
        cell.rate.append(self.fixed_rate(DIRECT_PORT, None))

    def run_sidecar(self, workers: int, rnd: int) -> None:
        name = f"sofamesh w{workers}"
        cell = self.results.cells[name]
        proc = self.start_sidecar(workers)
        try:
            time.sleep(0.5)
            mem = MemSample(*tree_memory(proc.pid))
            self.check_body(APP_PORT, name)
            self.wrk(APP_PORT, close=False, duration=WARMUP_SECONDS, pid=proc.pid)
            # The gate's cost is a paired comparison: alternate which one goes first.
            for limit in (False, True) if rnd % 2 == 0 else (True, False):
                self.reload_sidecar(workers, limit=limit)
                before = self.inbound_counters()
                sample = self.checked_wrk(name, APP_PORT, close=False, pid=proc.pid)
                self.check_counters(name, before, sample)
                (cell.ka_limit if limit else cell.ka).append(sample)
            self.reload_sidecar(workers, limit=False)
            before = self.inbound_counters()
            sample = self.checked_wrk(name, APP_PORT, close=True, pid=proc.pid)
            self.check_counters(name, before, sample)
            cell.close.append(sample)
            cell.rate.append(self.fixed_rate(APP_PORT, proc.pid))
            self.hold(APP_PORT, proc.pid, mem, sidecar=True)
            cell.mem.append(mem)
        finally:
            self.stop_sidecar(proc, workers)

    def run_haproxy(self, threads: int, rnd: int) -> None:
        name = f"haproxy t{threads}"
        port = HAPROXY_PORTS[threads]
        cell = self.results.cells[name]
        proc = self.start_haproxy(threads)
        try:
            time.sleep(0.5)
            mem = MemSample(*tree_memory(proc.pid))
            self.wrk(port, close=False, duration=WARMUP_SECONDS, pid=proc.pid)
            cell.ka.append(self.checked_wrk(name, port, close=False, pid=proc.pid))
            cell.close.append(self.checked_wrk(name, port, close=True, pid=proc.pid))
            cell.rate.append(self.fixed_rate(port, proc.pid))
            self.hold(port, proc.pid, mem, sidecar=False)
            cell.mem.append(mem)
        finally:
            self.node.stop(proc, timeout=10)

    def checked_wrk(self, name: str, port: int, *, close: bool, pid: int | None) -> WrkSample:
        sample = self.wrk(port, close=close, duration=self.args.duration, pid=pid)
        if sample.errors:
            mode = "close" if close else "keep-alive"
            self.problem(f"{name} {mode}: wrk counted {sample.errors} errors/non-2xx")
        return sample

    def check_counters(self, name: str, before: dict[str, int], sample: WrkSample) -> None:
        """The sidecar's own counters saw wrk's requests (the traffic went through it)."""
        after = self.inbound_counters()
        seen = after["requests"] - before["requests"]
        if seen < sample.requests:
            raise RuntimeError(
                f"{name}: wrk made {sample.requests} requests, the sidecar counted {seen}: "
                "the traffic did not go through it"
            )
        for key in ("rejected", "5xx", "errors"):
            if after[key] != before[key]:
                self.problem(f"{name}: sidecar counter {key} went {before[key]} -> {after[key]}")

    def problem(self, text: str) -> None:
        log(f"PROBLEM: {text}")
        self.results.problems.append(text)


def tree_cpu(pid: int | None) -> float:
    """User + system CPU seconds of a process and its live descendants (0 without a pid)."""
    if pid is None:
        return 0.0
    total = 0.0
    for proc in _tree(pid):
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def tree_memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB, summed over a process and its descendants."""
    rss = pss = 0.0
    for proc in _tree(pid):
        try:
            info = proc.memory_full_info()
        except psutil.NoSuchProcess:
            continue
        rss += info.rss / MB
        pss += getattr(info, "pss", info.rss) / MB
    return rss, pss


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def parse_wrk(text: str) -> WrkSample:
    """Requests/s, counts and the latency percentiles (ms) from `wrk --latency`."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    count = re.search(r"(\d+) requests in", text)
    pcts = dict(re.findall(r"^\s+(50|90|99)%\s+([\d.]+(?:us|ms|s|m|h))\s*$", text, re.M))
    if rate is None or count is None or len(pcts) != 3:
        raise RuntimeError(f"cannot read wrk's report:\n{text}")
    errors = benchlib.wrk_errors(text)

    def ms(value: str) -> float:
        number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value).groups()  # type: ignore[union-attr]
        return float(number) * _UNIT[unit]

    return WrkSample(
        rps=float(rate[1]),
        requests=int(count[1]),
        errors=errors,
        p50=ms(pcts["50"]),
        p90=ms(pcts["90"]),
        p99=ms(pcts["99"]),
    )


# -- the run -----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> tuple[Results, dict[str, str]]:
    from netlab import Lab  # noqa: PLC0415

    facts = machine_facts()
    started = time.monotonic()
    groups: list[tuple[str, int]] = [("direct", 0)]
    groups += [("sofamesh", w) for w in args.workers]
    groups += [("haproxy", w) for w in args.workers]
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="proxy-bench-")))
        workdir.chmod(0o755)  # nginx's workers and the uid-1337 proxies read files here
        lab = stack.enter_context(Lab(["node", "client"]))
        bench = Bench(args, lab, workdir)
        bench.start_app(stack)
        log(f"lab up (node {bench.node.ipv4}, client {bench.client.ipv4}); {workdir}")
        for rnd in range(args.rounds):
            if time.monotonic() - started > BUDGET_SECONDS:
                log(f"time budget of {BUDGET_SECONDS}s spent: stopping after {rnd} rounds")
                break
            # Reverse the order every other round, so a drift in load hits all cells alike.
            for kind, n in groups if rnd % 2 == 0 else groups[::-1]:
                if kind == "direct":
                    bench.run_direct(rnd)
                elif kind == "sofamesh":
                    bench.run_sidecar(n, rnd)
                else:
                    bench.run_haproxy(n, rnd)
                log(f"round {rnd + 1}/{args.rounds}: {summary(bench.results, kind, n)}")
            bench.results.rounds_done = rnd + 1
        if bench.results.problems:  # the work dir goes away: keep the proxies' stderr
            kept = Path(tempfile.mkdtemp(prefix="proxy-bench-logs-"))
            for path in workdir.glob("*.log"):
                shutil.copy(path, kept / path.name)
            bench.results.kept_logs = str(kept)
    facts["load_after"] = benchlib.loadavg()
    return bench.results, facts


def summary(results: Results, kind: str, n: int) -> str:
    name = "direct" if kind == "direct" else f"{kind} {'w' if kind == 'sofamesh' else 't'}{n}"
    cell = results.cells[name]
    text = (
        f"{name}: keep-alive {cell.ka[-1].rps:,.0f}/s, close {cell.close[-1].rps:,.0f}/s, "
        f"1000 rps p50/p99 {cell.rate[-1].service['50']:.3f}/{cell.rate[-1].service['99']:.3f} ms"
    )
    if cell.ka_limit:
        text += f", with limit {cell.ka_limit[-1].rps:,.0f}/s"
    if cell.mem:
        text += (
            f", cpu {cell.rate[-1].vcpu_per_krps:.3f} vCPU/krps, "
            f"rss {cell.mem[-1].rss_idle:.1f}/{cell.mem[-1].rss_held:.1f} MB"
        )
    return text


def machine_facts() -> dict[str, str]:
    return benchlib.machine_facts({"wrk": "wrk", "nginx": "nginx-light", "haproxy": "haproxy"})


def missing_packages() -> list[str]:
    return [package for package, binary in REQUIRED if shutil.which(binary) is None]


# -- report ------------------------------------------------------------------------------


median = benchlib.median


def _ms3(samples: Sequence[WrkSample]) -> str:
    return "/".join(
        f"{median([getattr(s, p) for s in samples]):.2f}" for p in ("p50", "p90", "p99")
    )


def _span(values: Sequence[float]) -> str:
    return f"{min(values):,.0f}..{max(values):,.0f}" if values else "-"


def _mark(ok: bool) -> str:
    return "met" if ok else "**not met**"


def report(args: argparse.Namespace, results: Results, facts: dict[str, str]) -> str:
    cells = results.cells
    names = ["direct"]
    names += [f"sofamesh w{w}" for w in args.workers]
    names += [f"haproxy t{w}" for w in args.workers]
    names = [n for n in names if cells[n].ka]
    rounds = results.rounds_done
    lines = [
        f"Medians of {rounds} interleaved round(s); wrk -t1 -c{CONNECTIONS} for "
        f"{args.duration:g} s per cell; fixed rate {FIXED_RATE} rps over {CONNECTIONS} "
        f"keep-alive connections for {args.rate_duration:g} s (+{WARMUP_SECONDS} s warm-up). "
        "Latencies in ms.",
        "",
        "Throughput (wrk; latency p50/p90/p99 from `--latency`):",
        "",
        "| config | keep-alive req/s | min..max | p50/p90/p99 | new conn/request req/s "
        "| min..max | p50/p90/p99 | proxy CPU us/req (keep-alive) | wrk errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        c = cells[name]
        cpu = f"{median([s.cpu_us_per_request for s in c.ka]):.1f}" if name != "direct" else "-"
        errs = sum(s.errors for s in [*c.ka, *c.close, *c.ka_limit])
        lines.append(
            f"| {name} | {median([s.rps for s in c.ka]):,.0f} | {_span([s.rps for s in c.ka])} "
            f"| {_ms3(c.ka)} | {median([s.rps for s in c.close]):,.0f} "
            f"| {_span([s.rps for s in c.close])} | {_ms3(c.close)} | {cpu} | {errs} |"
        )
    lines += [
        "",
        f"Fixed rate {FIXED_RATE} rps (bench/proxy_client.py; 'service' latency is timed from "
        "the request's write, 'corrected' from when it was due, as wrk2 does):",
        "",
        "| config | achieved rps | service p50/p90/p99 | corrected p50/p90/p99 "
        "| proxy vCPU per 1,000 rps | RSS idle MB | RSS at 1,000 conns MB "
        "| PSS idle/at 1,000 MB | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        c = cells[name]
        service = "/".join(
            f"{median([s.service[p] for s in c.rate]):.3f}" for p in ("50", "90", "99")
        )
        corrected = "/".join(
            f"{median([s.corrected[p] for s in c.rate]):.3f}" for p in ("50", "90", "99")
        )
        if c.mem:
            cpu = f"{median([s.vcpu_per_krps for s in c.rate]):.3f}"
            rss = (
                f"{median([m.rss_idle for m in c.mem]):.1f} | "
                f"{median([m.rss_held for m in c.mem]):.1f}"
            )
            pss_idle = median([m.pss_idle for m in c.mem])
            pss = f"{pss_idle:.1f}/{median([m.pss_held for m in c.mem]):.1f}"
        else:
            cpu, rss, pss = "-", "- | -", "-"
        lines.append(
            f"| {name} | {median([s.achieved for s in c.rate]):,.0f} | {service} | {corrected} "
            f"| {cpu} | {rss} | {pss} | {sum(s.errors for s in c.rate)} |"
        )
    lines += ["", *targets(args, results)]
    held = [m for n in names for m in cells[n].mem if m.held != HOLD_CONNECTIONS]
    if held:
        lines += ["", f"Note: {len(held)} hold run(s) kept fewer than {HOLD_CONNECTIONS} answered."]
    lines += [
        "",
        "Notes: haproxy listens on ports excluded from interception (no NAT redirect on its "
        "path, only the proxy's own cost), sofamesh gets its traffic through the iptables "
        "REDIRECT rules, so the haproxy column is a slightly favourable reference. RSS is "
        "summed over the proxy's processes (with 2 workers: the master and 2 forked workers, "
        "which share pages, so PSS is shown too); haproxy is one process with threads. "
        "CPU is user+system time of the proxy's processes during the fixed-rate run divided by "
        "its requests (warm-up included), i.e. vCPU-seconds per second / (rps / 1000). The "
        "1,000 held connections are opened after the load runs, each with one answered "
        "request. The fixed-rate client is Python asyncio, whose timers have 1 ms "
        "granularity: the 'corrected' latencies include up to ~1 ms of the dispatcher's own "
        "lateness for every configuration alike, so the added latency uses the service "
        "latencies.",
    ]
    if results.problems:
        lines += ["", "Problems seen during the run:", ""]
        lines += [f"- {p}".replace("\n", "\n  ") for p in results.problems]
    return "\n".join(lines) + "\n"


def targets(args: argparse.Namespace, results: Results) -> list[str]:
    cells = results.cells
    direct = cells["direct"]
    proxies = [f"sofamesh w{w}" for w in args.workers] + [f"haproxy t{w}" for w in args.workers]
    proxies = [p for p in proxies if cells[p].ka]
    if not direct.ka:
        return []
    ka_direct = median([s.rps for s in direct.ka])
    close_direct = median([s.rps for s in direct.close])
    rows: dict[str, list[str]] = defaultdict(list)
    for name in proxies:
        c = cells[name]
        ka = median([s.rps for s in c.ka]) / ka_direct
        close = median([s.rps for s in c.close]) / close_direct
        added = {
            p: median([s.service[p] for s in c.rate]) - median([s.service[p] for s in direct.rate])
            for p in ("50", "90", "99")
        }
        cpu = median([s.vcpu_per_krps for s in c.rate])
        idle = median([m.rss_idle for m in c.mem])
        held = median([m.rss_held for m in c.mem])
        rows["ka"].append(f"{ka:.3f} x direct: {_mark(ka >= TARGET_KA)}")
        rows["close"].append(f"{close:.3f} x direct: {_mark(close >= TARGET_CLOSE)}")
        rows["p50"].append(f"{added['50']:+.3f} ms: {_mark(added['50'] <= TARGET_ADDED_P50)}")
        rows["p90"].append(f"{added['90']:+.3f} ms (no target)")
        rows["p99"].append(f"{added['99']:+.3f} ms: {_mark(added['99'] <= TARGET_ADDED_P99)}")
        rows["cpu"].append(f"{cpu:.3f}: {_mark(cpu <= TARGET_CPU)}")
        rows["idle"].append(f"{idle:.1f} MB: {_mark(idle <= TARGET_RSS_IDLE)}")
        rows["held"].append(f"{held:.1f} MB: {_mark(held <= TARGET_RSS_HELD)}")
        if c.ka_limit:
            gate = 1 - median([s.rps for s in c.ka_limit]) / median([s.rps for s in c.ka])
            paired = 1 - median([a.rps / b.rps for a, b in zip(c.ka_limit, c.ka, strict=True)])
            rows["gate"].append(
                f"{100 * gate:+.1f} % [paired {100 * paired:+.1f} %]: {_mark(gate <= TARGET_GATE)}"
            )
        else:
            rows["gate"].append("n/a (no equivalent gate configured)")
    labels = {
        "ka": f"keep-alive throughput ≥ {TARGET_KA} x direct",
        "close": f"new connection per request ≥ {TARGET_CLOSE} x direct",
        "p50": f"added latency per hop at {FIXED_RATE} rps, p50 ≤ {TARGET_ADDED_P50} ms",
        "p90": f"added latency per hop at {FIXED_RATE} rps, p90",
        "p99": f"added latency per hop at {FIXED_RATE} rps, p99 ≤ {TARGET_ADDED_P99} ms",
        "cpu": f"CPU ≤ {TARGET_CPU} vCPU per 1,000 rps",
        "idle": f"RSS idle ≤ {TARGET_RSS_IDLE:g} MB",
        "held": f"RSS at {HOLD_CONNECTIONS:,} connections ≤ {TARGET_RSS_HELD:g} MB",
        "gate": f"max-requests gate (limit {MAX_LIMIT} vs none) costs ≤ {100 * TARGET_GATE:g} %",
    }
    out = [
        "Targets (ratios of medians; added latency = median percentile through the proxy minus "
        "direct, service latency):",
        "",
        "| target | " + " | ".join(proxies) + " |",
        "|---|" + "---:|" * len(proxies),
    ]
    out += [f"| {labels[key]} | " + " | ".join(rows[key]) + " |" for key in labels]
    return out


def write_results(command: str, facts: dict[str, str], table: str, note: str) -> None:
    shared = (
        f"Load average before/after: {facts['load_before']} / {facts['load_after']}; "
        f"other processes' labs present at start: {facts['other_labs']}."
    )
    section = [
        SECTION_BEGIN,
        "## Sidecar proxy (bench/proxy.py)",
        "",
        f"Command: `{command}`",
        "",
        f"Date: {facts['date']}. Machine: nproc {facts['nproc']} ({facts['cpu']}), "
        f"uname -r {facts['kernel']}; Python {facts['python']}, wrk {facts['wrk']}, "
        f"nginx {facts['nginx']}, haproxy {facts['haproxy']}. {shared}",
    ]
    if note:
        section += ["", f"**Note:** {note}"]
    section += ["", table.rstrip("\n"), SECTION_END]
    benchlib.replace_section(SECTION_BEGIN, SECTION_END, "\n".join(section))


# -- command line ------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"proxy: {message}", file=sys.stderr, flush=True)


def _workers(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError("expected 1, 2 or 1,2") from None
    if not values or any(v not in HAPROXY_PORTS for v in values):
        raise argparse.ArgumentTypeError("expected 1, 2 or 1,2")
    return values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/proxy.py", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (>= 3; default 3)")
    p.add_argument("--duration", type=float, default=5, help="seconds of wrk per measurement")
    p.add_argument("--rate-duration", type=float, default=10, help="seconds of the fixed-rate run")
    p.add_argument(
        "--workers", type=_workers, default=[1, 2], help="sidecar workers / haproxy threads"
    )
    p.add_argument("--quick", action="store_true", help="smoke check: 1 round, 2 s, 3 s rate")
    p.add_argument("--note", default="", help="a note for the results section")
    p.add_argument("--write-results", action="store_true", help=f"update {RESULTS_FILE.name}")
    p.add_argument("--raw", type=Path, help="also write every round's samples to this JSON file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.rate_duration = 1, 2, 3
    elif args.rounds < 3:
        parser().error("--rounds must be at least 3 (the result is a median); or use --quick")
    if os.geteuid() != 0:
        log("needs root: it builds network-namespace VMs (never touching this host's own)")
        return 3
    missing = missing_packages()
    if missing:
        log(f"missing Debian packages; install them with: apt-get install -y {' '.join(missing)}")
        return 2
    # Children inherit it (the hard limit may be below NOFILE where it cannot be raised).
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        hard = max(hard, NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    command = shlex.join(["python", "bench/proxy.py", *argv])
    results, facts = run(args)
    if results.problems and results.kept_logs:
        log(f"problems seen; the proxies' logs are kept in {results.kept_logs}")
    table = report(args, results, facts)
    print(table, end="")
    if args.raw is not None:
        raw = {
            "command": command,
            "facts": facts,
            "rounds": results.rounds_done,
            "cells": {name: dataclasses.asdict(cell) for name, cell in results.cells.items()},
            "problems": results.problems,
        }
        args.raw.write_text(json.dumps(raw, indent=1) + "\n")
        log(f"wrote {args.raw}")
    if args.write_results:
        note = args.note
        if args.quick:
            note = (note + " " if note else "") + "Smoke run (--quick): 1 round, not a median."
        write_results(command, facts, table, note)
        log(f"wrote {RESULTS_FILE.relative_to(REPO)}")
    return 1 if results.problems else 0


if __name__ == "__main__":
    sys.exit(main())
