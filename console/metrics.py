"""Bounded, downsampled metric series (R-OB-1..3).

Each metrics post is added to two buckets of its node: 10 s (kept an hour) and 1 min (kept a
day); older rows are dropped by `purge`. Sidecar counts per status are snapshot every 10 s
per instance into the same two resolutions. Reads pick the resolution from the window.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from console.agent_schemas import SIDECAR_STATUSES, MetricsReport
from console.models import RES_COARSE, RES_FINE, MetricBucket, Node, SidecarSnapshot
from console.state import OFFLINE_AFTER, unix_now

KEEP = {RES_FINE: 3600, RES_COARSE: 86400}


def resolution(minutes: int) -> int:
    return RES_FINE if minutes <= 60 else RES_COARSE


def _insert(db: Session, table: Table) -> Any:
    dialect = db.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def record(db: Session, node_id: int, report: MetricsReport) -> None:
    """Add one post's counters and gauges to the node's buckets."""
    inbound = [p for p in report.ports if p.direction == "inbound"]
    outbound = [p for p in report.ports if p.direction == "outbound"]
    counters: dict[str, Any] = {
        "req_in": sum(p.requests for p in inbound),
        "err_in": sum(p.errors for p in inbound),
        "rt_in": float(sum(p.rt_ms_sum for p in inbound)),
        "req_out": sum(p.requests for p in outbound),
        "err_out": sum(p.errors for p in outbound),
        "rt_out": float(sum(p.rt_ms_sum for p in outbound)),
        "bytes_in": sum(p.bytes_in for p in report.ports),
        "bytes_out": sum(p.bytes_out for p in report.ports),
        "samples": 1,
        "cpu_sum": float(report.node.cpu_percent),
        "mem_sum": float(report.node.mem_percent),
        "load1_sum": float(report.node.load1),
        "net_in": report.node.net_in_bytes,
        "net_out": report.node.net_out_bytes,
    }
    at = int(report.at.timestamp())
    table = MetricBucket.__table__
    assert isinstance(table, Table)
    for res in (RES_FINE, RES_COARSE):
        stmt = _insert(db, table).values(node_id=node_id, res=res, t=at - at % res, **counters)
        stmt = stmt.on_conflict_do_update(
            index_elements=["node_id", "res", "t"],
            set_={name: table.c[name] + stmt.excluded[name] for name in counters},
        )
        db.execute(stmt)


def sidecar_state(node: Node, now: int) -> tuple[str, bool]:
    """A node's sidecar status and health; a silent node's sidecar is Unknown, unhealthy."""
    seen = node.last_seen
    if node.sidecar_status is None or seen is None or now - seen.timestamp() > OFFLINE_AFTER:
        return "Unknown", False
    return node.sidecar_status, bool(node.healthy)


def counts(nodes: Iterable[Node], now: int) -> dict[str, int]:
    result = dict.fromkeys((*SIDECAR_STATUSES, "healthy"), 0)
    for node in nodes:
        status, healthy = sidecar_state(node, now)
        result[status] += 1
        result["healthy"] += int(healthy)
    return result


def reported_nodes(db: Session, instance_id: int | None = None) -> list[Node]:
    query = select(Node).where(Node.status_at.is_not(None))
    if instance_id is not None:
        query = query.where(Node.instance_id == instance_id)
    return list(db.execute(query).scalars())


def snapshot(db: Session) -> None:
    """Record the current sidecar counts of every instance that has reporting nodes."""
    now = unix_now()
    by_instance: dict[int, list[Node]] = {}
    for node in reported_nodes(db):
        by_instance.setdefault(node.instance_id, []).append(node)
    table = SidecarSnapshot.__table__
    assert isinstance(table, Table)
    for instance_id, nodes in by_instance.items():
        c = counts(nodes, now)
        row = {
            "running": c["Running"],
            "terminated": c["Terminated"],
            "waiting": c["Waiting"],
            "unknown": c["Unknown"],
            "healthy": c["healthy"],
        }
        for res in (RES_FINE, RES_COARSE):
            stmt = _insert(db, table).values(
                instance_id=instance_id, res=res, t=now - now % res, **row
            )
            # The minute bucket holds the latest snapshot in that minute.
            stmt = stmt.on_conflict_do_update(index_elements=["instance_id", "res", "t"], set_=row)
            db.execute(stmt)
    db.commit()


def purge(db: Session) -> None:
    now = unix_now()
    for res, keep in KEEP.items():
        for model in (MetricBucket, SidecarSnapshot):
            db.execute(delete(model).where(model.res == res, model.t < now - keep))
    db.commit()


def to_datetime(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)
