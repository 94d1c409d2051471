"""The sidecar in namespace VMs: node (apps + sidecar + rules), client and peer.

    with sidecar_lab({"limits": {"8081": 5}}) as env:
        env.curl(env.client, env.url(8080, "/small.bin"))     # inbound, through the sidecar
        env.sidecar.counters("inbound", 8080)["requests_total"]

node runs nginx (8080, 8085), the stdlib apps of sidecar_apps.py (hold 8081, ws-echo 8082,
echo 8083, tcp-echo 8084), optionally redis (6379), and the sidecar as uid 1337 with the
nftables interception rules applied only after its admin port listens. peer runs nginx
(8080) and a hold app (8081) for outbound tests. Nothing listens on node:8099.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from netlab import VM, Lab, wait_until

PROXY_UID = 1337
ADMIN_PORT = 15000
APP_PORT = 8080  # nginx on node and peer
HOLD_PORT = 8081
WS_PORT = 8082
ECHO_PORT = 8083
TCP_ECHO_PORT = 8084
METRICS_PORT = 8085  # nginx on node; only the metrics test sends here (absolute counts)
REDIS_PORT = 6379
CLOSED_PORT = 8099  # nothing listens: upstream connect fails
SMALL_SIZE = 1024
BIG_SIZE = 50 * 1024 * 1024 + 12345
APPS = str(Path(__file__).with_name("sidecar_apps.py"))
START_DEADLINE = 30.0

Counters = dict[str, float]


def require(*tools: str) -> None:
    """Skip (with the reason and the Debian package) when a tool the test drives is missing."""
    packages = {
        "nginx": "nginx-light",
        "curl": "curl",
        "wrk": "wrk",
        "redis-server": "redis-server",
        "redis-cli": "redis-tools",
        "nft": "nftables",
    }
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        need = " ".join(sorted({packages.get(tool, tool) for tool in missing}))
        pytest.skip(f"needs {', '.join(missing)} on PATH (apt-get install {need})")


def make_workdir() -> Path:
    """A directory uid 1337 can read (pytest's tmp_path is 0700 root), removed by the caller."""
    path = Path(tempfile.mkdtemp(prefix="sofamesh-sidecar-test-"))
    path.chmod(0o755)
    return path


def app_argv(*args: str) -> list[str]:
    return [sys.executable, "-P", APPS, *args]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def without_date(raw: bytes) -> bytes:
    """Response bytes with every Date header's value blanked (the one thing that moves)."""
    return re.sub(rb"(?im)^date: [^\r\n]*", b"Date: -", raw)


def split_responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The HTTP/1.1 responses in `raw`, in order: (status, lower-cased headers, body bytes)."""
    responses = []
    rest = raw
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {head[:200]!r}"
        first, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
        status = int(first.split()[1])
        if "chunked" in headers.get("transfer-encoding", ""):
            end = chunked_length(rest)
            body, rest = rest[:end], rest[end:]
        else:
            size = int(headers.get("content-length", len(rest)))
            body, rest = rest[:size], rest[size:]
        responses.append((status, headers, body))
    return responses


def chunked_length(data: bytes) -> int:
    """How many bytes of `data` the chunked body at its start takes (chunks and trailers)."""
    pos = 0
    while True:
        eol = data.index(b"\r\n", pos)
        size = int(data[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            return pos + 2 if data[pos : pos + 2] == b"\r\n" else data.index(b"\r\n\r\n", pos) + 4
        pos += size + 2


# --- processes in VMs --------------------------------------------------------------------


def write_www(root: Path, *, big: bool) -> dict[str, bytes | Path]:
    """Deterministic content: small.bin (1 KB), one.txt, gz/text.txt; big.bin when asked."""
    www = root / "www"
    (www / "gz").mkdir(parents=True, exist_ok=True)
    rng = random.Random(20240601)
    files: dict[str, bytes | Path] = {
        "small.bin": rng.randbytes(SMALL_SIZE),
        "one.txt": b"one\n",
        "gz/text.txt": b"".join(b"line %06d of compressible text\n" % i for i in range(4000)),
    }
    for name, data in files.items():
        assert isinstance(data, bytes)
        (www / name).write_bytes(data)
    if big:
        path = www / "big.bin"
        with path.open("wb") as file:
            for _ in range(BIG_SIZE // (1 << 20)):
                file.write(rng.randbytes(1 << 20))
            file.write(rng.randbytes(BIG_SIZE % (1 << 20)))
        files["big.bin"] = path
    return files


def start_nginx(vm: VM, root: Path, ports: Sequence[int]) -> subprocess.Popen[str]:
    listens = "".join(f"listen {p}; listen [::]:{p};" for p in ports)
    temp = "".join(
        f"{kind}_temp_path {root}/{kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    conf = root / "nginx.conf"
    conf.write_text(
        f"user root; daemon off; worker_processes 1; pid {root}/nginx.pid;\n"
        f"error_log {root}/error.log warn;\n"
        "events { worker_connections 1024; }\n"
        f"http {{ access_log off; {temp} default_type application/octet-stream;\n"
        "  keepalive_requests 1000000; keepalive_timeout 120s;\n"
        f"  server {{ {listens} root {root}/www;\n"
        "    location /gz/ { gzip on; gzip_types *; gzip_min_length 0; gzip_http_version 1.0; }\n"
        "  }\n}\n"
    )
    proc = vm.spawn(
        ["nginx", "-e", f"{root}/error.log", "-p", str(root), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for port in ports:
        vm.wait_for_port(port, host=None, process=proc)
    return proc


def start_app(vm: VM, kind: str, port: int) -> subprocess.Popen[str]:
    proc = vm.spawn(
        app_argv(kind, "--port", str(port)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    vm.wait_for_port(port, host=None, process=proc)
    return proc


def start_redis(vm: VM, root: Path) -> subprocess.Popen[str]:
    argv = ["redis-server", "--port", str(REDIS_PORT), "--bind", "* -::*"]
    argv += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no"]
    argv += ["--dir", str(root)]
    proc = vm.spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    vm.wait_for_port(REDIS_PORT, host=None, process=proc)
    return proc


# --- the sidecar -------------------------------------------------------------------------


@dataclass
class Sidecar:
    """The sidecar under test: its config file, its processes and its admin API."""

    vm: VM
    root: Path
    doc: dict[str, Any]
    proc: subprocess.Popen[str] | None = None
    """The sidecar serving now (the newest after a hot restart)."""
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state_dir = self.root / "state"
        self.state_dir.mkdir(exist_ok=True)
        os.chown(self.state_dir, PROXY_UID, PROXY_UID)
        self.config_path = self.root / "sidecar.json"
        self.write_config(self.doc)

    def write_config(self, doc: Mapping[str, Any]) -> None:
        """Replace the config file (the running sidecar reads it on reload); state_dir set."""
        self.doc = {"state_dir": str(self.state_dir), **doc}
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc))
        tmp.chmod(0o644)
        tmp.replace(self.config_path)

    def argv(self, *extra: str, config: Path | None = None) -> list[str]:
        path = str(config or self.config_path)
        return [sys.executable, "-m", "agent", "sidecar", "run", "--config", path, *extra]

    def spawn(self, *extra: str) -> subprocess.Popen[str]:
        """Start a sidecar process (logs to a file: DEBUG output must never block on a pipe)."""
        log = self.root / f"sidecar-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("w") as stderr:
            proc = self.vm.spawn(
                self.argv(*extra), user=PROXY_UID, stdout=subprocess.DEVNULL, stderr=stderr
            )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        """Stop every sidecar process still running (SIGTERM, then SIGKILL)."""
        for proc in self.procs:
            if proc.poll() is None:
                self.vm.stop(proc)

    def start(self) -> subprocess.Popen[str]:
        """Start and wait until the admin port listens and /ready says ready."""
        self.proc = self.spawn()
        self.vm.wait_for_port(ADMIN_PORT, process=self.proc, deadline=START_DEADLINE)
        self.wait_ready()
        return self.proc

    def wait_ready(self) -> None:
        wait_until(
            lambda: self.admin("GET", "/ready")[0] == 200,
            deadline=START_DEADLINE,
            interval=0.1,
            what="sidecar /ready answers 200",
        )

    def log_text(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')}" for p in self.logs)

    def admin(self, method: str, path: str) -> tuple[int, str]:
        """(status, body) of an admin request made from inside the node (0: no answer)."""
        url = f"http://127.0.0.1:{ADMIN_PORT}{path}"
        done = self.vm.run(
            [
                "curl",
                "-s",
                "-X",
                method,
                "--max-time",
                "10",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                url,
            ],
            check=False,
            timeout=20,
        )
        body, _, code = done.stdout.rpartition("\n")
        return int(code or 0), body

    def admin_json(self, method: str, path: str) -> tuple[int, Any]:
        status, body = self.admin(method, path)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def stats(self) -> dict[str, Any]:
        status, doc = self.admin_json("GET", "/stats")
        assert status == 200, f"GET /stats answered {status}: {doc!r}"
        assert isinstance(doc, dict)
        return doc

    def counters(self, direction: str, port: int) -> Counters:
        """One port's /stats entry flattened ("responses.2xx"); all zero before first use."""
        for entry in self.stats()["ports"]:
            if entry["direction"] == direction and entry["port"] == port:
                return flatten(entry)
        return {}

    def wait_counters(
        self, direction: str, port: int, done: Callable[[Counters], bool], what: str
    ) -> Counters:
        """Counters once `done(counters)` holds: workers may publish a moment after clients."""
        seen: list[Counters] = [{}]

        def check() -> bool:
            seen[0] = self.counters(direction, port)
            return done(seen[0])

        try:
            wait_until(check, deadline=10.0, interval=0.05, what=what)
        except Exception as exc:
            raise AssertionError(f"{what}; last /stats entry: {seen[0]}") from exc
        return seen[0]

    def delta_after(
        self, direction: str, port: int, before: Counters, expect: Mapping[str, float]
    ) -> Counters:
        """Counter changes since `before`, once each key of `expect` moved at least that much."""

        def moved(now: Counters) -> bool:
            return all(now.get(k, 0) - before.get(k, 0) >= v for k, v in expect.items())

        now = self.wait_counters(direction, port, moved, f"{direction} {port} moved by {expect}")
        return {k: now.get(k, 0) - before.get(k, 0) for k in set(now) | set(before)}

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, body = self.admin("GET", "/metrics")
        assert status == 200, f"GET /metrics answered {status}"
        return parse_prometheus(body)

    def digest(self) -> str:
        status, doc = self.admin_json("GET", "/config")
        assert status == 200, f"GET /config answered {status}: {doc!r}"
        return str(doc["digest"])

    def reload(self, doc: Mapping[str, Any]) -> tuple[int, Any]:
        self.write_config(doc)
        return self.admin_json("POST", "/reload")

    def pids(self, proc: subprocess.Popen[str] | None = None) -> set[int]:
        """The sidecar's process and its descendants (workers)."""
        proc = proc or self.proc
        assert proc is not None
        try:
            top = psutil.Process(proc.pid)
            return {top.pid, *(child.pid for child in top.children(recursive=True))}
        except psutil.NoSuchProcess:
            return set()

    def reset_peak_rss(self) -> None:
        """Start VmHWM afresh at the current RSS (Linux clear_refs "5")."""
        for pid in self.pids():
            with contextlib.suppress(OSError):
                Path(f"/proc/{pid}/clear_refs").write_text("5")

    def peak_rss_bytes(self) -> int:
        """The largest VmHWM (peak resident set) among the sidecar's processes."""
        peak = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
        return peak

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, proc: subprocess.Popen[str], deadline: float) -> int:
        code = wait_until(
            lambda: proc.poll() is not None,
            deadline=deadline,
            interval=0.05,
            what=f"sidecar pid {proc.pid} exits",
        )
        assert code
        return int(proc.returncode)


def flatten(entry: Mapping[str, Any], prefix: str = "") -> Counters:
    flat: Counters = {}
    for key, value in entry.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
    return flat


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(name, labels): value} of a Prometheus text exposition (comments skipped)."""
    samples = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = _SAMPLE.match(line.strip())
        assert match, f"not a Prometheus sample line: {line!r}"
        labels = frozenset(_LABEL.findall(match[2] or ""))
        samples[(match[1], labels)] = float(match[3])
    return samples


def sample(
    metrics: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    return metrics.get((name, frozenset(labels.items())))


# --- the lab -----------------------------------------------------------------------------


@dataclass
class SidecarLab:
    lab: Lab
    root: Path
    sidecar: Sidecar
    files: dict[str, bytes | Path]
    rules_applied: bool = False

    @property
    def node(self) -> VM:
        return self.lab["node"]

    @property
    def client(self) -> VM:
        return self.lab["client"]

    @property
    def peer(self) -> VM:
        return self.lab["peer"]

    def host(self, vm: VM, family: int = 4) -> str:
        if family == 6:
            assert vm.ipv6 is not None
            return vm.ipv6
        return vm.ipv4

    def url(self, port: int, path: str, *, vm: VM | None = None, family: int = 4) -> str:
        host = self.host(vm or self.node, family)
        return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"

    def sofamesh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "agent", "--root", str(self.root / "root"), *args]
        return self.node.run(argv, check=check, timeout=120)

    def apply_rules(self) -> None:
        """Intercept node's traffic; only ever called while the sidecar's admin port listens."""
        config = self.root / "hijack.json"
        config.write_text(json.dumps({"proxy": {"user": PROXY_UID}}))
        self.sofamesh("hijack", "apply", "--backend", "nftables", "--config", str(config))
        self.rules_applied = True

    def remove_rules(self) -> None:
        self.sofamesh("hijack", "remove", "--backend", "nftables")
        self.rules_applied = False

    def curl(self, vm: VM, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return vm.run(["curl", "-s", "--max-time", str(timeout), *args], timeout=timeout + 10)

    def run_app(self, vm: VM, *args: str, timeout: float = 60.0) -> dict[str, Any]:
        """Run a sidecar_apps.py client in `vm` and return the JSON line it printed."""
        done = vm.run(app_argv(*args), timeout=timeout)
        result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
        return result

    def raw(
        self, vm: VM, host: str, port: int, data: bytes, *extra: str
    ) -> tuple[dict[str, Any], bytes]:
        """Send `data` in one write from `vm`; (summary, every byte received)."""
        send = Path(tempfile.mkstemp(dir=self.root, suffix=".send")[1])
        out = send.with_suffix(".recv")
        send.write_bytes(data)
        send.chmod(0o644)
        result = self.run_app(
            vm, "raw", host, str(port), "--send", str(send), "--out", str(out), *extra
        )
        received = out.read_bytes()
        send.unlink()
        out.unlink()
        return result, received

    def hold_app(self, vm: VM, path: str) -> dict[str, int]:
        """Control a hold app directly on the VM's loopback (never intercepted, never counted)."""
        done = self.curl(vm, f"http://127.0.0.1:{HOLD_PORT}{path}", timeout=10)
        result: dict[str, int] = json.loads(done.stdout)
        return result

    def burst(self, vm: VM, host: str, port: int, path: str, count: int) -> Burst:
        out = Path(tempfile.mkstemp(dir=self.root, suffix=".burst")[1])
        out.chmod(0o666)
        proc = vm.spawn(
            app_argv("burst", host, str(port), path, "--count", str(count), "--out", str(out)),
            stdout=subprocess.DEVNULL,
        )
        return Burst(proc, out, count)

    def session(self, vm: VM, host: str, port: int) -> Session:
        proc = vm.spawn(app_argv("session", host, str(port)), stdin=subprocess.PIPE)
        return Session(proc)


@dataclass
class Burst:
    """Concurrent requests in flight from a VM; answers arrive in `out`, one JSON per line."""

    proc: subprocess.Popen[str]
    out: Path
    count: int

    def answers(self) -> list[dict[str, Any]]:
        lines = self.out.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def wait_answers(self, n: int, deadline: float = 20.0) -> list[dict[str, Any]]:
        wait_until(
            lambda: len(self.answers()) >= n,
            deadline=deadline,
            interval=0.05,
            what=f"{n} of {self.count} burst answers",
        )
        return self.answers()

    def finish(self, deadline: float = 30.0) -> list[dict[str, Any]]:
        self.proc.wait(timeout=deadline)
        answers = self.answers()
        assert len(answers) == self.count, answers
        return answers


@dataclass
class Session:
    """One keep-alive connection driven request by request (each answer within IO_TIMEOUT)."""

    proc: subprocess.Popen[str]

    def request(self, line: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, (
            f"session client ended; stderr: {self.proc.stderr and self.proc.stderr.read()}"
        )
        result: dict[str, Any] = json.loads(answer)
        return result

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@contextlib.contextmanager
def sidecar_lab(
    config: Mapping[str, Any],
    *,
    big: bool = False,
    redis: bool = False,
    start: bool = True,
) -> Iterator[SidecarLab]:
    """A fresh lab with every app running; the sidecar started and rules applied if `start`."""
    require("nginx", "curl", "nft", *(("redis-server", "redis-cli") if redis else ()))
    root = make_workdir()
    try:
        with Lab(["node", "client", "peer"], kill_grace=0.5) as lab:
            node, peer = lab["node"], lab["peer"]
            files = write_www(root / "node-nginx", big=big)
            write_www(root / "peer-nginx", big=False)
            start_nginx(node, root / "node-nginx", [APP_PORT, METRICS_PORT])
            start_nginx(peer, root / "peer-nginx", [APP_PORT])
            for kind, port in (
                ("hold", HOLD_PORT),
                ("ws-echo", WS_PORT),
                ("echo", ECHO_PORT),
                ("tcp-echo", TCP_ECHO_PORT),
            ):
                start_app(node, kind, port)
            start_app(peer, "hold", HOLD_PORT)
            if redis:
                start_redis(node, root)
            env = SidecarLab(lab, root, Sidecar(node, root, dict(config)), files)
            if start:
                env.sidecar.start()
                env.apply_rules()
            try:
                yield env
            finally:
                if env.rules_applied:
                    env.remove_rules()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- wrk ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    requests: int
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    non_2xx_3xx: int
    text: str

    @property
    def socket_errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts


def parse_wrk(text: str) -> WrkResult:
    """wrk prints the socket error and non-2xx lines only when they are not zero."""
    total = re.search(r"(\d+) requests in ", text)
    assert total, f"not wrk output: {text!r}"
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    connect, read, write, timeout = (int(n) for n in errors.groups()) if errors else (0,) * 4
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        requests=int(total[1]),
        connect_errors=connect,
        read_errors=read,
        write_errors=write,
        timeouts=timeout,
        non_2xx_3xx=int(non2xx[1]) if non2xx else 0,
        text=text,
    )
