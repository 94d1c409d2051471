"""The sidecar in namespace VMs: node (apps + sidecar + rules), client and peer.

    with sidecar_lab({"limits": {"8081": 5}}) as env:
        env.curl(env.client, env.url(8080, "/small.bin"))     # inbound, through the sidecar
        env.sidecar.counters("inbound", 8080)["requests_total"]

node runs nginx (8080, 8085), the stdlib apps of sidecar_apps.py (hold 8081, ws-echo 8082,
echo 8083, tcp-echo 8084, banner 8086), optionally redis (6379), and the sidecar as uid 1337
with the nftables interception rules applied only after its admin port listens. peer runs
nginx (8080) and a hold app (8081) for outbound tests. Nothing listens on node:8099.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from netlab import VM, Lab, wait_until
from tests.netns.sidecar_proc import PROXY_UID, Sidecar

APP_PORT = 8080  # nginx on node and peer
HOLD_PORT = 8081
WS_PORT = 8082
ECHO_PORT = 8083
TCP_ECHO_PORT = 8084
METRICS_PORT = 8085  # nginx on node; only the metrics test sends here (absolute counts)
BANNER_PORT = 8086
REDIS_PORT = 6379
CLOSED_PORT = 8099  # nothing listens: upstream connect fails
SMALL_SIZE = 1024
BIG_SIZE = 50 * 1024 * 1024 + 12345
APPS = str(Path(__file__).with_name("sidecar_apps.py"))


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

    def apply_rules(self, **doc: Any) -> None:
        """Intercept node's traffic; only ever called while the sidecar's admin port listens.

        Applying again with another `doc` replaces the rules in one transaction.
        """
        config = self.root / "hijack.json"
        config.write_text(json.dumps({"proxy": {"user": PROXY_UID}, **doc}))
        self.sofamesh("hijack", "apply", "--backend", "nftables", "--config", str(config))
        self.rules_applied = True

    def remove_rules(self, *, park: bool = False) -> None:
        """Remove the rules; park=True keeps already-redirected connections working (the
        kernel would otherwise stop translating them) until a plain remove."""
        self.sofamesh("hijack", "remove", "--backend", "nftables", *(["--park"] if park else []))
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
                ("banner", BANNER_PORT),
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
