"""Per-app traffic over time and per-node gauges (R-OB-1): what the charts of one app show."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import func, select

from console import metrics
from console.api_apps import AppPath, find_app
from console.api_monitor import Minutes
from console.auth import ScopeDep
from console.models import MetricBucket, Node
from console.state import DbDep, unix_now
from console.views import AppMonitoring, NodeMetrics, TrafficPoint

router = APIRouter(prefix="/api/v1", tags=["monitoring"])


@router.get("/monitoring/apps/{name}", response_model=AppMonitoring)
def app_monitoring(
    name: AppPath, scope: ScopeDep, db: DbDep, minutes: Minutes = 5
) -> AppMonitoring:
    """The app's requests, errors, RT and bytes per bucket (10 s up to an hour, else 1 min),
    and each node's CPU, memory, load, network and traffic over the window."""
    app = find_app(db, scope.instance_id, name, ["path", "name"])
    res = metrics.resolution(minutes)
    now = unix_now()
    since = now - minutes * 60
    window = (
        MetricBucket.res == res,
        MetricBucket.t >= since - since % res,
        Node.app_id == app.id,
    )
    series = []
    for t, req, err, rt, b_in, b_out in db.execute(
        select(
            MetricBucket.t,
            func.sum(MetricBucket.req_in),
            func.sum(MetricBucket.err_in),
            func.sum(MetricBucket.rt_in),
            func.sum(MetricBucket.bytes_in),
            func.sum(MetricBucket.bytes_out),
        )
        .join(Node, MetricBucket.node_id == Node.id)
        .where(*window)
        .group_by(MetricBucket.t)
        .order_by(MetricBucket.t)
    ).all():
        # PostgreSQL sums integers as numeric (Decimal): convert before dividing.
        requests = int(req or 0)
        series.append(
            TrafficPoint(
                t=int(t),
                requests=requests,
                errors=int(err or 0),
                rt_ms=round(float(rt or 0) / requests, 3) if requests else 0.0,
                bytes_in=int(b_in or 0),
                bytes_out=int(b_out or 0),
            )
        )
    sums = {
        node_id: row
        for node_id, *row in db.execute(
            select(
                MetricBucket.node_id,
                func.sum(MetricBucket.samples),
                func.sum(MetricBucket.cpu_sum),
                func.sum(MetricBucket.mem_sum),
                func.sum(MetricBucket.load1_sum),
                func.sum(MetricBucket.net_in),
                func.sum(MetricBucket.net_out),
                func.sum(MetricBucket.req_in),
                func.sum(MetricBucket.err_in),
                func.sum(MetricBucket.rt_in),
                func.max(MetricBucket.t),
            )
            .join(Node, MetricBucket.node_id == Node.id)
            .where(*window)
            .group_by(MetricBucket.node_id)
        ).all()
    }
    nodes = []
    for node in db.execute(select(Node).where(Node.app_id == app.id).order_by(Node.id)).scalars():
        samples, cpu, mem, load, net_in, net_out, req, err, rt, last = sums.get(
            node.id, (0, 0.0, 0.0, 0.0, 0, 0, 0, 0, 0.0, None)
        )
        samples, req = int(samples or 0), int(req or 0)
        nodes.append(
            NodeMetrics(
                ip=node.ip,
                hostname=node.hostname,
                cpu_percent=round(float(cpu or 0) / samples, 2) if samples else 0.0,
                mem_percent=round(float(mem or 0) / samples, 2) if samples else 0.0,
                load1=round(float(load or 0) / samples, 3) if samples else 0.0,
                net_in_bytes=int(net_in or 0),
                net_out_bytes=int(net_out or 0),
                requests_per_min=round(req / minutes, 3),
                rt_ms=round(float(rt or 0) / req, 3) if req else 0.0,
                error_rate=round(int(err or 0) / req, 6) if req else 0.0,
                updated_at=metrics.to_datetime(last),
            )
        )
    return AppMonitoring(app=app.name, resolution=res, series=series, nodes=nodes)
