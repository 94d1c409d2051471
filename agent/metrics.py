"""What the agent reports every 10 s (R-OB-1): per app port, the sidecar's counters since
the previous report; per node, CPU, memory, network and load; and the sidecar's own CPU
and RSS for the agent's Prometheus endpoint (R-OB-4)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import psutil

from agent.console_client import NodeGauges, PortCounters

PortKey = tuple[str, int]
COUNTERS = ("requests", "errors", "rt_ms_sum", "bytes_in", "bytes_out")


def port_totals(stats: dict[str, Any]) -> dict[PortKey, dict[str, float]]:
    """Cumulative counters per (direction, port) from the sidecar's GET /stats."""
    totals: dict[PortKey, dict[str, float]] = {}
    for row in stats.get("ports", []):
        totals[(str(row["direction"]), int(row["port"]))] = {
            "requests": row["requests_total"],
            "errors": row["responses"]["5xx"],
            "rt_ms_sum": row["latency"]["sum_s"] * 1000.0,
            "bytes_in": row["bytes_received"],
            "bytes_out": row["bytes_sent"],
        }
    return totals


@dataclass
class Deltas:
    """Turns cumulative counters into per-report deltas. A sidecar restart resets its
    counters: a value lower than the previous one counts from zero."""

    previous: dict[PortKey, dict[str, float]] = field(default_factory=dict)

    def take(self, totals: dict[PortKey, dict[str, float]]) -> list[PortCounters]:
        rows: list[PortCounters] = []
        for (direction, port), now in sorted(totals.items()):
            before = self.previous.get((direction, port), {})
            delta = {
                name: now[name] - before.get(name, 0.0)
                if now[name] >= before.get(name, 0.0)
                else now[name]
                for name in COUNTERS
            }
            if direction not in ("inbound", "outbound"):
                continue
            rows.append(
                PortCounters(
                    direction="inbound" if direction == "inbound" else "outbound",
                    port=port,
                    requests=int(delta["requests"]),
                    errors=int(delta["errors"]),
                    rt_ms_sum=round(delta["rt_ms_sum"], 3),
                    bytes_in=int(delta["bytes_in"]),
                    bytes_out=int(delta["bytes_out"]),
                )
            )
        self.previous = totals
        return rows


@dataclass
class NodeSampler:
    """Node gauges; network counters are this network namespace's (a VM's own)."""

    _net: tuple[int, int] | None = None

    def sample(self) -> NodeGauges:
        net = psutil.net_io_counters()
        now = (int(net.bytes_recv), int(net.bytes_sent))
        before = self._net or now
        self._net = now
        return NodeGauges(
            cpu_percent=min(100.0, psutil.cpu_percent(interval=None)),
            mem_percent=min(100.0, psutil.virtual_memory().percent),
            net_in_bytes=max(0, now[0] - before[0]),
            net_out_bytes=max(0, now[1] - before[1]),
            load1=round(os.getloadavg()[0], 2),
        )


def process_usage(pid: int | None) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of a process and its children; zeros when it is gone."""
    if pid is None:
        return 0.0, 0
    try:
        proc = psutil.Process(pid)
        members = [proc, *proc.children(recursive=True)]
        cpu = sum(sum(p.cpu_times()[:2]) for p in members)
        rss = sum(p.memory_info().rss for p in members)
    except psutil.Error:
        return 0.0, 0
    return cpu, rss
