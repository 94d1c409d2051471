"""The sidecar process under test, driven as an operator would: config file, signals and
the admin API on 127.0.0.1:15000 (queried from inside its VM with curl)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from netlab import VM, wait_until

PROXY_UID = 1337  # no passwd entry needed: rules and setuid take the number
ADMIN_PORT = 15000
START_DEADLINE = 30.0

Counters = dict[str, float]
Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]


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

    def metrics(self) -> Metrics:
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


def parse_prometheus(text: str) -> Metrics:
    """{(name, labels): value} of a Prometheus text exposition (comments skipped)."""
    samples: Metrics = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = _SAMPLE.match(line.strip())
        assert match, f"not a Prometheus sample line: {line!r}"
        labels = frozenset(_LABEL.findall(match[2] or ""))
        samples[(match[1], labels)] = float(match[3])
    return samples


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    """The value of one sample, or None when the exposition does not have it."""
    return metrics.get((name, frozenset(labels.items())))
