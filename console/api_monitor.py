"""Sidecar list (R-CO-5), sidecar monitoring (R-OB-2) and real-time monitoring (R-OB-3)."""

from __future__ import annotations

from collections import Counter
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from console import metrics, values
from console.api_apps import find_app
from console.auth import ScopeDep
from console.models import App, MetricBucket, Node, SidecarSnapshot
from console.state import OFFLINE_AFTER, DbDep, unix_now
from console.views import (
    AppTraffic,
    RealtimeMonitoring,
    SidecarMonitoring,
    SidecarOut,
    StatusPoint,
    VersionCount,
)

router = APIRouter(prefix="/api/v1", tags=["monitoring"])
Minutes = Annotated[int, Query(ge=1, le=1440)]
TOP = 5


@router.get("/sidecars", response_model=list[SidecarOut])
def sidecars(
    scope: ScopeDep,
    db: DbDep,
    app: Annotated[str | None, Query(pattern=values.APP_NAME_RE.pattern)] = None,
) -> list[SidecarOut]:
    """Every node whose agent registered or reported, with its sidecar."""
    query = (
        select(Node, App.name)
        .join(App, Node.app_id == App.id)
        .where(Node.instance_id == scope.instance_id)
        .where(Node.registered_at.is_not(None) | Node.status_at.is_not(None))
        .order_by(App.name, Node.ip)
    )
    if app is not None:
        query = query.where(
            Node.app_id == find_app(db, scope.instance_id, app, ["query", "app"]).id
        )
    now = unix_now()
    result = []
    for node, app_name in db.execute(query).all():
        status, healthy = metrics.sidecar_state(node, now)
        seen = node.last_seen
        online = seen is not None and now - seen.timestamp() <= OFFLINE_AFTER
        result.append(
            SidecarOut(
                sidecar_name=f"{app_name}-sidecar-{node.hostname or node.ip}",
                version=node.sidecar_version,
                app=app_name,
                node_name=node.hostname,
                node_ip=node.ip,
                node_status="Online" if online else "Offline",
                sidecar_status=status,
                healthy=healthy,
                created_at=node.sidecar_created_at,
                backend=node.backend,
                rule_digest=node.rule_digest,
                ipv6=node.ipv6,
                updated_at=node.status_at,
            )
        )
    return result


@router.get("/monitoring/sidecars", response_model=SidecarMonitoring)
def sidecar_monitoring(scope: ScopeDep, db: DbDep, minutes: Minutes = 5) -> SidecarMonitoring:
    """Counts per sidecar status and healthy count over time, plus the live point now."""
    res = metrics.resolution(minutes)
    now = unix_now()
    since = now - minutes * 60
    rows = db.execute(
        select(SidecarSnapshot)
        .where(
            SidecarSnapshot.instance_id == scope.instance_id,
            SidecarSnapshot.res == res,
            SidecarSnapshot.t >= since - since % res,
        )
        .order_by(SidecarSnapshot.t)
    ).scalars()
    series = [
        StatusPoint(
            t=r.t,
            Running=r.running,
            Terminated=r.terminated,
            Waiting=r.waiting,
            Unknown=r.unknown,
            healthy=r.healthy,
        )
        for r in rows
    ]
    nodes = metrics.reported_nodes(db, scope.instance_id)
    live = metrics.counts(nodes, now)
    series = [p for p in series if p.t < now - now % res]
    series.append(StatusPoint(t=now, **live))
    versions = Counter(
        n.sidecar_version or "unknown"
        for n in nodes
        if metrics.sidecar_state(n, now)[0] != "Unknown"
    )
    return SidecarMonitoring(
        series=series,
        versions=[VersionCount(version=v, count=c) for v, c in sorted(versions.items())],
    )


@router.get("/monitoring/realtime", response_model=RealtimeMonitoring)
def realtime(scope: ScopeDep, db: DbDep, minutes: Minutes = 5) -> RealtimeMonitoring:
    """Per app over the window: requests/min, RT, error rate (inbound requests, i.e. what the
    app served), bytes in and out, online replicas; plus the top 5 by each."""
    res = metrics.resolution(minutes)
    now = unix_now()
    since = now - minutes * 60
    sums = {
        name: row
        for name, *row in db.execute(
            select(
                App.name,
                func.sum(MetricBucket.req_in),
                func.sum(MetricBucket.err_in),
                func.sum(MetricBucket.rt_in),
                func.sum(MetricBucket.bytes_in),
                func.sum(MetricBucket.bytes_out),
                func.max(MetricBucket.t),
            )
            .join(Node, MetricBucket.node_id == Node.id)
            .join(App, Node.app_id == App.id)
            .where(
                App.instance_id == scope.instance_id,
                MetricBucket.res == res,
                MetricBucket.t >= since - since % res,
            )
            .group_by(App.name)
        ).all()
    }
    replicas: Counter[str] = Counter()
    for node, name in db.execute(
        select(Node, App.name)
        .join(App, Node.app_id == App.id)
        .where(Node.instance_id == scope.instance_id)
    ).all():
        seen = node.last_seen
        if seen is not None and now - seen.timestamp() <= OFFLINE_AFTER:
            replicas[name] += 1
    names = db.execute(
        select(App.name).where(App.instance_id == scope.instance_id).order_by(App.name)
    ).scalars()
    apps = []
    for name in names:
        req, err, rt, b_in, b_out, last = sums.get(name, (0, 0, 0.0, 0, 0, None))
        req, err = int(req or 0), int(err or 0)
        apps.append(
            AppTraffic(
                app=name,
                replicas=replicas[name],
                bytes_in=int(b_in or 0),
                bytes_out=int(b_out or 0),
                requests_per_min=round(req / minutes, 3),
                rt_ms=round(float(rt or 0) / req, 3) if req else 0.0,
                error_rate=round(err / req, 6) if req else 0.0,
                updated_at=metrics.to_datetime(last),
            )
        )
    busy = [a for a in apps if a.requests_per_min > 0]
    return RealtimeMonitoring(
        top_requests=sorted(busy, key=lambda a: -a.requests_per_min)[:TOP],
        top_rt=sorted(busy, key=lambda a: -a.rt_ms)[:TOP],
        top_error_rate=sorted(busy, key=lambda a: -a.error_rate)[:TOP],
        apps=apps,
    )
