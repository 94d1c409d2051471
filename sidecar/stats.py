"""Per-port counters of one worker, their JSON snapshot, merging and Prometheus text.

Counters are plain attributes on a slotted object: the hot path does `stats.requests += 1`.
Workers are merged on demand by the admin API (exact, not sampled).
"""

from __future__ import annotations

import bisect
from typing import Any

# Request latency buckets (seconds), Prometheus-style upper bounds.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
ERROR_KINDS = ("upstream_connect", "upstream_reset", "downstream_reset", "timeout", "bad_request")
PROTOCOLS = ("http", "tcp")


class PortStats:
    __slots__ = (
        "active_connections",
        "active_requests",
        "bucket_counts",
        "bytes_received",
        "bytes_sent",
        "connections",
        "direction",
        "errors",
        "latency_count",
        "latency_sum",
        "limit_rejections",
        "port",
        "requests",
        "responses",
    )

    def __init__(self, direction: str, port: int) -> None:
        self.direction = direction
        self.port = port
        self.connections = dict.fromkeys(PROTOCOLS, 0)
        self.active_connections = 0
        self.requests = 0
        self.active_requests = 0
        self.responses = dict.fromkeys(STATUS_CLASSES, 0)
        self.errors = dict.fromkeys(ERROR_KINDS, 0)
        self.limit_rejections = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.bucket_counts = [0] * (len(BUCKETS) + 1)
        self.latency_count = 0
        self.latency_sum = 0.0

    def observe(self, status: int, seconds: float) -> None:
        self.responses[STATUS_CLASSES[min(max(status // 100, 1), 5) - 1]] += 1
        self.bucket_counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.latency_count += 1
        self.latency_sum += seconds

    def snapshot(self) -> dict[str, Any]:
        cumulative, total = {}, 0
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), self.bucket_counts, strict=True):
            total += count
            cumulative[bound] = total
        return {
            "direction": self.direction,
            "port": self.port,
            "protocol_connections": dict(self.connections),
            "connections_total": sum(self.connections.values()),
            "active_connections": self.active_connections,
            "requests_total": self.requests,
            "active_requests": self.active_requests,
            "responses": dict(self.responses),
            "errors": dict(self.errors),
            "limit_rejections": self.limit_rejections,
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
            "latency": {
                "count": self.latency_count,
                "sum_s": self.latency_sum,
                "buckets": cumulative,
            },
        }


class Stats:
    """All ports of one worker."""

    def __init__(self) -> None:
        self.ports: dict[tuple[str, int], PortStats] = {}

    def port(self, direction: str, port: int) -> PortStats:
        key = (direction, port)
        stats = self.ports.get(key)
        if stats is None:
            stats = self.ports[key] = PortStats(direction, port)
        return stats

    def snapshot(self) -> list[dict[str, Any]]:
        return [s.snapshot() for _, s in sorted(self.ports.items())]


def merge(snapshots: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Add up port snapshots from several workers (or an old process and a new one)."""
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    for ports in snapshots:
        for entry in ports:
            key = (entry["direction"], entry["port"])
            if key not in merged:
                merged[key] = _deep_copy(entry)
            else:
                _add(merged[key], entry)
    return [merged[k] for k in sorted(merged)]


def without_gauges(ports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Counters only: what a new process carries over from the one it replaces."""
    out = []
    for entry in ports:
        copy = _deep_copy(entry)
        copy["active_connections"] = 0
        copy["active_requests"] = 0
        out.append(copy)
    return out


def _deep_copy(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: (_deep_copy(v) if isinstance(v, dict) else v) for k, v in entry.items()}


def _add(into: dict[str, Any], other: dict[str, Any]) -> None:
    for key, value in other.items():
        if key in ("direction", "port"):
            continue
        if isinstance(value, dict):
            _add(into.setdefault(key, {}), value)
        else:
            into[key] = into.get(key, 0) + value


def prometheus(ports: list[dict[str, Any]], *, workers: int, ready: bool) -> str:
    """The documented metric names, prefixed sofamesh_sidecar_."""
    p = "sofamesh_sidecar_"
    lines = [
        f"# HELP {p}workers Worker processes serving the listeners.",
        f"# TYPE {p}workers gauge",
        f"{p}workers {workers}",
        f"# HELP {p}ready 1 when the listeners accept connections.",
        f"# TYPE {p}ready gauge",
        f"{p}ready {1 if ready else 0}",
    ]
    families: list[tuple[str, str, str]] = [
        ("requests_total", "counter", "HTTP requests received."),
        ("responses_total", "counter", "HTTP responses sent, by status class."),
        ("errors_total", "counter", "Errors, by kind."),
        ("limit_rejections_total", "counter", "Requests refused by the max-requests limit."),
        ("request_duration_seconds", "histogram", "First request byte to last response byte."),
        ("bytes_received_total", "counter", "Bytes received from the downstream peer."),
        ("bytes_sent_total", "counter", "Bytes sent to the downstream peer."),
        ("connections_total", "counter", "Connections accepted, by detected protocol."),
        ("active_connections", "gauge", "Connections open now."),
        ("active_requests", "gauge", "HTTP requests in flight now."),
    ]
    for name, kind, help_text in families:
        lines += [f"# HELP {p}{name} {help_text}", f"# TYPE {p}{name} {kind}"]
        for e in ports:
            labels = f'direction="{e["direction"]}",port="{e["port"]}"'
            lines += _samples(p + name, labels, e, name)
    return "\n".join(lines) + "\n"


def _samples(metric: str, labels: str, e: dict[str, Any], name: str) -> list[str]:
    match name:
        case "requests_total":
            return [f"{metric}{{{labels}}} {e['requests_total']}"]
        case "responses_total":
            return [f'{metric}{{{labels},class="{c}"}} {n}' for c, n in e["responses"].items()]
        case "errors_total":
            return [f'{metric}{{{labels},kind="{k}"}} {n}' for k, n in e["errors"].items()]
        case "limit_rejections_total":
            return [f"{metric}{{{labels}}} {e['limit_rejections']}"]
        case "request_duration_seconds":
            lat = e["latency"]
            out = [f'{metric}_bucket{{{labels},le="{le}"}} {n}' for le, n in lat["buckets"].items()]
            return [
                *out,
                f"{metric}_sum{{{labels}}} {lat['sum_s']}",
                f"{metric}_count{{{labels}}} {lat['count']}",
            ]
        case "bytes_received_total":
            return [f"{metric}{{{labels}}} {e['bytes_received']}"]
        case "bytes_sent_total":
            return [f"{metric}{{{labels}}} {e['bytes_sent']}"]
        case "connections_total":
            return [
                f'{metric}{{{labels},protocol="{k}"}} {n}'
                for k, n in e["protocol_connections"].items()
            ]
        case "active_connections":
            return [f"{metric}{{{labels}}} {e['active_connections']}"]
        case _:
            return [f"{metric}{{{labels}}} {e['active_requests']}"]
