"""Bounded, downsampled metric series (R-OB-1..3).

Each metrics post is added to two buckets of its node: 10 s (kept an hour) and 1 min (kept a
day); older rows are dropped by `purge`. Sidecar counts per status are snapshot every 10 s
per instance into the same two resolutions. Reads pick the resolution from the window.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, and_, case, delete, func, not_, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from console.agent_schemas import SIDECAR_STATUSES
from console.models import RES_COARSE, RES_FINE, MetricBucket, Node, SidecarSnapshot
from console.state import OFFLINE_AFTER, unix_now

KEEP = {RES_FINE: 3600, RES_COARSE: 86400}


def resolution(minutes: int) -> int:
    return RES_FINE if minutes <= 60 else RES_COARSE


def _insert(db: Session, table: Table) -> Any:
    dialect = db.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


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


def current_counts(db: Session, now: int) -> dict[int, dict[str, int]]:
    """`counts` of every instance with reporting nodes, counted by the database: the
    snapshot runs every 10 s, and loading thousands of nodes as objects each time took a
    share of the CPU the agents' requests need."""
    unknown = or_(
        Node.sidecar_status.is_(None),
        Node.last_seen.is_(None),
        Node.last_seen < to_datetime(now - OFFLINE_AFTER),
    )
    per_node = (
        select(
            Node.instance_id.label("instance_id"),
            case((unknown, "Unknown"), else_=Node.sidecar_status).label("status"),
            case((and_(not_(unknown), Node.healthy.is_(True)), 1), else_=0).label("healthy"),
        )
        .where(Node.status_at.is_not(None))
        .subquery()
    )
    query = select(
        per_node.c.instance_id, per_node.c.status, func.count(), func.sum(per_node.c.healthy)
    ).group_by(per_node.c.instance_id, per_node.c.status)
    result: dict[int, dict[str, int]] = {}
    for instance_id, status, count, healthy in db.execute(query):
        c = result.setdefault(instance_id, dict.fromkeys((*SIDECAR_STATUSES, "healthy"), 0))
        if status in c:
            c[status] += count
        c["healthy"] += int(healthy or 0)
    return result


def snapshot(db: Session) -> None:
    """Record the current sidecar counts of every instance that has reporting nodes."""
    now = unix_now()
    table = SidecarSnapshot.__table__
    assert isinstance(table, Table)
    for instance_id, c in current_counts(db, now).items():
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
