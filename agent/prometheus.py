"""The agent's own Prometheus endpoint on loopback (R-OB-4): GET /metrics.

Gauges about the agent's view of the node; the sidecar's request metrics stay on the
sidecar's admin port (GET /metrics there), so nothing is counted twice.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.daemon import Daemon

log = logging.getLogger("sofamesh.agent")
STATES = ("STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL")


@dataclass
class AgentMetrics:
    sidecar_state: str = "STOPPED"
    sidecar_healthy: bool = False
    sidecar_restarts: int = 0
    sidecar_cpu_seconds: float = 0.0
    sidecar_rss_bytes: int = 0
    rules_installed: bool = False
    enabled: bool = False
    config_version: int = 0
    console_reachable: bool = False
    converged: bool = False

    def update(self, daemon: Daemon) -> None:
        runtime = daemon.runtime
        self.sidecar_state = runtime.supervisor.state.value
        self.sidecar_healthy = runtime.health.healthy
        self.sidecar_restarts = runtime.supervisor.restarts
        self.rules_installed = runtime.rules.digest is not None
        self.enabled = bool(daemon.desired and daemon.desired.enabled)
        self.config_version = daemon.desired.version if daemon.desired else 0
        self.console_reachable = daemon.feed.reachable

    def render(self) -> str:
        lines: list[str] = []

        def gauge(name: str, value: float, help_text: str, labels: str = "") -> None:
            if not any(line.startswith(f"# HELP {name} ") for line in lines):
                lines.append(f"# HELP {name} {help_text}")
                lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name}{labels} {value:g}")

        for state in STATES:
            gauge(
                "sofamesh_agent_sidecar_state",
                1 if state == self.sidecar_state else 0,
                "The sidecar supervisor's state (1 for the current one).",
                f'{{state="{state}"}}',
            )
        gauge("sofamesh_agent_sidecar_healthy", self.sidecar_healthy, "Debounced health.")
        gauge("sofamesh_agent_sidecar_restarts", self.sidecar_restarts, "Restarts so far.")
        gauge("sofamesh_agent_sidecar_cpu_seconds", self.sidecar_cpu_seconds, "CPU used.")
        gauge("sofamesh_agent_sidecar_rss_bytes", self.sidecar_rss_bytes, "Resident memory.")
        gauge("sofamesh_agent_rules_installed", self.rules_installed, "Interception is on.")
        gauge("sofamesh_agent_hijack_enabled", self.enabled, "The console's switch.")
        gauge("sofamesh_agent_config_version", self.config_version, "Config version applied.")
        gauge("sofamesh_agent_console_reachable", self.console_reachable, "Last call worked.")
        return "\n".join(lines) + "\n"


def serve_metrics(port: int, metrics: AgentMetrics) -> ThreadingHTTPServer | None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/metrics":
                self.send_error(404)
                return
            body = metrics.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    except OSError as exc:
        log.warning("metrics endpoint 127.0.0.1:%d not started: %s", port, exc)
        return None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
