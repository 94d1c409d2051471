"""`sofamesh agent run`: the node agent's daemon (R-AG-3..7, R-OB-1, R-OB-4).

One loop observes the node, decides and acts (agent/runtime.py) whenever the console sends
a new config, the sidecar changes state, or half a second passes. Beside it: the config
feed (long-poll, cache), the reporter (status and metrics to the console every 10 s and at
once on a change), and a Prometheus endpoint on loopback.

SIGTERM ends the agent and leaves the sidecar and the rules as they are: the next agent
(a restart, an upgrade, the boot) adopts them. Switching interception off is the console's
switch or `sofamesh uninstall`, never a stopped agent.
"""

from __future__ import annotations

import faulthandler
import logging
import logging.handlers
import os
import signal
import socket
import threading
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from types import FrameType
from typing import Any

from agent import procs, settings
from agent.console_client import ConsoleClient, ConsoleClientError, Credentials, SidecarStatus
from agent.desired import NodeDesired, from_console
from agent.errors import BadInput
from agent.feed import ConfigFeed
from agent.metrics import Deltas, NodeSampler, port_totals, process_usage
from agent.paths import Paths, write_json_atomic
from agent.prometheus import AgentMetrics, serve_metrics
from agent.runtime import NodeRuntime, admin_get
from agent.supervisor import State
from agent.units import sd_notify
from hijack.command import SubprocessRunner
from hijack.detect import choose

log = logging.getLogger("sofamesh.agent")
TICK = 0.5
REPORT_EVERY = 10.0
FATAL_RETRY = 60.0  # a sidecar that could not stay up is tried again after this long
FAULT_RETRY = 5.0  # after an unexpected error in the loop
METRICS_PORT = 15020


def sofamesh_version() -> str:
    try:
        return version("sofamesh")
    except PackageNotFoundError:
        return "0.0.0"


def setup_logging(paths: Paths, verbose: bool) -> None:
    """Rotated log file (R-OB-4); SIGUSR1 toggles DEBUG at run time."""
    paths.log_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    handler = logging.handlers.RotatingFileHandler(
        paths.agent_log, maxBytes=10 * 2**20, backupCount=3
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("sofamesh")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False

    def toggle(_sig: int, _frame: FrameType | None) -> None:
        root.setLevel(logging.INFO if root.level == logging.DEBUG else logging.DEBUG)

    signal.signal(signal.SIGUSR1, toggle)
    # SIGQUIT writes every thread's stack to the log: what an operator needs when the
    # agent seems stuck.
    if handler.stream is not None:
        faulthandler.register(signal.SIGQUIT, file=handler.stream, all_threads=True)


def node_ip(host: str, port: int) -> str:
    """The address this node reaches the console from: the one the console lists."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((host, port))
        return str(probe.getsockname()[0])


class Daemon:
    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        loaded = settings.load(paths)
        if loaded is None:
            raise BadInput(str(paths.settings), "is missing: run `sofamesh install` first")
        self.settings = loaded
        self.ip = loaded.ip or node_ip(loaded.console_host, loaded.console_port)
        self.hostname = socket.gethostname()
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.report_now = threading.Event()
        runner = SubprocessRunner()
        options = loaded.ebpf_options(paths.root)
        self.backend = choose(loaded.effective_backend, runner, options).backend
        self.client = ConsoleClient(
            loaded.console, Credentials(loaded.access_key, settings.read_secret(paths))
        )
        self.feed = ConfigFeed(
            self.client, paths=paths, app=loaded.app, ip=self.ip, wake=self.wake.set, stop=self.stop
        )
        self.runtime = NodeRuntime(
            paths, self.backend, loaded.proxy_user, options, on_change=self._changed
        )
        self.desired: NodeDesired | None = None
        self.desired_error: str | None = None
        self.metrics = AgentMetrics()
        self.deltas = Deltas()
        self.sampler = NodeSampler()
        self._fatal_since: float | None = None
        self.loop_error: str | None = None
        self._last_status: dict[str, Any] | None = None
        self._last_status_write = 0.0

    # -- life --------------------------------------------------------------------------------

    def run(self) -> None:
        def terminate(_sig: int, _frame: FrameType | None) -> None:
            self.stop.set()
            self.wake.set()

        signal.signal(signal.SIGTERM, terminate)
        signal.signal(signal.SIGINT, terminate)
        log.info(
            "agent %s starting: app %s, node %s, backend %s, console %s",
            sofamesh_version(),
            self.settings.app,
            self.ip,
            self.backend.name,
            self.settings.console,
        )
        self.feed.start()
        sd_notify("READY=1")  # Type=notify under systemd; a no-op elsewhere
        reporter = threading.Thread(target=self._report_loop, name="reporter", daemon=True)
        reporter.start()
        server = serve_metrics(METRICS_PORT, self.metrics)
        try:
            while not self.stop.is_set():
                try:
                    self._iteration()
                except Exception as exc:
                    # A fault of this node (a missing file, a kernel that refuses) must not
                    # end the agent: the sidecar and rules stay, and we say why and retry.
                    log.exception("reconcile failed")
                    self.loop_error = f"{type(exc).__name__}: {exc}"
                    self._write_status(force=True)
                    self.stop.wait(FAULT_RETRY)
                else:
                    self.loop_error = None
                self.wake.wait(TICK)
                self.wake.clear()
        finally:
            if server is not None:
                server.shutdown()
            self._write_status(force=True, stopping=True)
            log.info("agent stopped; the sidecar and the rules stay as they are")

    def _iteration(self) -> None:
        doc = self.feed.document
        if doc is not None and (self.desired is None or doc["version"] != self.desired.version):
            try:
                self.desired = from_console(doc, self.paths, self.settings.proxy_user, self.backend)
                self.desired_error = None
            except BadInput as exc:
                # Keep running what we have; say why (R-SF-2).
                if self.desired_error != str(exc):
                    log.error("refused config version %s: %s", doc.get("version"), exc)
                self.desired_error = str(exc)
        self._retry_fatal()
        if self.desired is not None:
            self.runtime.step(self.desired)
        self.metrics.update(self)
        self._write_status()

    def _retry_fatal(self) -> None:
        if self.runtime.supervisor.state != State.FATAL:
            self._fatal_since = None
            return
        now = time.monotonic()
        if self._fatal_since is None:
            self._fatal_since = now
        elif now - self._fatal_since >= FATAL_RETRY:
            log.info("sidecar: trying again after %gs in FATAL", FATAL_RETRY)
            self._fatal_since = None
            self.runtime.supervisor.start()

    def _changed(self) -> None:
        self.report_now.set()
        self.wake.set()

    # -- status ------------------------------------------------------------------------------

    def converged(self) -> bool:
        desired, runtime = self.desired, self.runtime
        if desired is None:
            return False
        seen = runtime.observe()
        if desired.enabled:
            return (
                seen.sidecar_healthy
                and seen.rules_digest == desired.rules_digest
                and seen.sidecar_digest == desired.sidecar_digest
            )
        return not seen.sidecar_running and seen.rules_digest is None and not seen.parked

    def status_document(self) -> dict[str, Any]:
        runtime, desired = self.runtime, self.desired
        value, healthy = runtime.sidecar_status(desired.enabled if desired else None)
        pid = runtime.supervisor.pid
        return {
            "agent_pid": os.getpid(),
            "app": self.settings.app,
            "node_ip": self.ip,
            "backend": self.backend.name,
            "console": {
                "url": self.settings.console,
                "reachable": self.feed.reachable,
                "error": self.feed.error,
            },
            "config": {
                "version": desired.version if desired else None,
                "source": self.feed.source,
                "refused": self.desired_error,
            },
            "enabled": desired.enabled if desired else None,
            "sidecar": {
                "status": value,
                "healthy": healthy,
                "state": runtime.supervisor.state.value,
                "pid": pid,
                "restarts": runtime.supervisor.restarts,
                "health": runtime.health.reason,
            },
            "rules": {
                "installed": runtime.rules.digest is not None,
                "digest": runtime.rules.digest,
                "parked": runtime.rules.parked,
                "expected": desired.rules_digest if desired else None,
            },
            "converged": self.converged(),
            "error": self.loop_error or runtime.last_error,
        }

    def _write_status(self, force: bool = False, stopping: bool = False) -> None:
        doc = self.status_document()
        doc["running"] = not stopping
        now = time.monotonic()
        if force or doc != self._last_status or now - self._last_status_write > 5:
            doc["updated"] = time.time()
            write_json_atomic(self.paths.agent_status, doc, mode=0o644)
            doc.pop("updated")
            self._last_status, self._last_status_write = doc, now

    # -- reporting ---------------------------------------------------------------------------

    def _report_loop(self) -> None:
        next_metrics = time.monotonic() + REPORT_EVERY
        while not self.stop.is_set():
            self.report_now.wait(REPORT_EVERY)
            self.report_now.clear()
            try:
                self._post_status()
                if time.monotonic() >= next_metrics:
                    next_metrics = time.monotonic() + REPORT_EVERY
                    self._post_metrics()
            except ConsoleClientError as exc:
                log.warning("report: %s", exc)
                self.stop.wait(REPORT_EVERY)  # the feed's backoff covers reconnecting

    def _post_status(self) -> None:
        runtime, desired = self.runtime, self.desired
        value, healthy = runtime.sidecar_status(desired.enabled if desired else None)
        pid = runtime.supervisor.pid
        started = procs.created_at(pid) if pid else None
        status = SidecarStatus(
            sidecar_status=value,  # type: ignore[arg-type]
            healthy=healthy,
            version=sofamesh_version(),
            backend=self.backend.name,  # type: ignore[arg-type]
            created_at=datetime.fromtimestamp(started, UTC) if started else None,
            rule_digest=runtime.rules.digest or "",
            ipv6=bool(desired and self._ipv6(desired)),
        )
        self.client.post_status(self.settings.app, self.ip, self.hostname, status)

    @staticmethod
    def _ipv6(desired: NodeDesired) -> bool:
        # "auto" intercepts IPv6 where the node has it (hijack/resolve.py).
        if desired.hijack.ipv6 == "auto":
            return os.path.exists("/proc/net/if_inet6")
        return desired.hijack.ipv6 == "on"

    def _post_metrics(self) -> None:
        ports = []
        if self.runtime.supervisor.pid is not None and self.runtime.health.healthy:
            try:
                stats = admin_get(self.runtime.health_spec.admin_port, "/stats")
                ports = self.deltas.take(port_totals(stats))
            except OSError as exc:
                log.debug("sidecar /stats: %s", exc)
        self.client.post_metrics(self.settings.app, self.ip, self.sampler.sample(), ports)
        cpu, rss = process_usage(self.runtime.supervisor.pid)
        self.metrics.sidecar_cpu_seconds, self.metrics.sidecar_rss_bytes = cpu, rss


def run_agent(paths: Paths, verbose: bool) -> None:
    setup_logging(paths, verbose)
    with procs.locked(paths.agent_lock, "agent", wait=0):
        procs.write_pid(paths.agent_pid, os.getpid())
        try:
            try:
                daemon = Daemon(paths)
            except Exception as exc:
                # Say why where install and `status` look, then let the service manager
                # retry: the cause may go away (a console that comes up, a module loaded).
                log.exception("agent cannot start")
                write_json_atomic(
                    paths.agent_status,
                    {"running": False, "startup_error": str(exc), "updated": time.time()},
                    mode=0o644,
                )
                raise
            daemon.run()
        finally:
            paths.agent_pid.unlink(missing_ok=True)
