"""What agents call, every request signed (R-CO-6): register, config long-poll, status,
metrics. A key sees only its own instance: any other app or node is a 404."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from console import configdoc, metrics, values
from console.agent_schemas import MetricsReport, NodeRef, RegisterRequest, StatusReport
from console.api_apps import find_app, find_node
from console.auth import AgentDep, scope_of
from console.errors import BadInput, NotFound
from console.models import Node
from console.state import ConsoleState, DbDep, StateDep, now, unix_now
from console.views import NodeConfig, RegisterOut, WhoAmIOut

router = APIRouter(prefix="/api/v1/agent", tags=["agent"])
MAX_WAIT = 60
# Metrics may be posted late (R-AG-7: catch up after an outage), but not beyond what is kept.
METRICS_PAST = 86400
METRICS_FUTURE = 300


def _node(db: Session, instance_id: int, ref: NodeRef) -> Node:
    app = find_app(db, instance_id, ref.app, ["body", "app"])
    return find_node(db, app, ref.ip, ["body", "ip"])


@router.get("/whoami", response_model=WhoAmIOut)
def whoami(agent: AgentDep, db: DbDep) -> WhoAmIOut:
    """The key's scope, so `sofamesh install -t -w -i` can check what the operator typed
    against what the key may see and name the field that differs (R-CLI-1, R-SF-2)."""
    scope = scope_of(db, agent.instance_id, agent.key_id, None)
    return WhoAmIOut(
        key_id=agent.key_id,
        tenant=scope.tenant,
        workspace=scope.workspace,
        instance_id=scope.instance,
    )


@router.post("/register", response_model=RegisterOut)
def register(body: RegisterRequest, agent: AgentDep, db: DbDep) -> RegisterOut:
    node = _node(db, agent.instance_id, body)
    at = now()
    node.hostname = body.hostname
    node.registered_at = node.registered_at or at
    node.last_seen = at
    db.commit()
    return RegisterOut(node_id=node.id, config_version=node.config_version)


@router.post("/status", status_code=204)
def status(body: StatusReport, agent: AgentDep, db: DbDep) -> Response:
    node = _node(db, agent.instance_id, body)
    at = now()
    node.hostname = body.hostname
    node.sidecar_status = body.sidecar_status
    node.healthy = body.healthy
    node.sidecar_version = body.version
    node.sidecar_created_at = body.created_at
    node.backend = body.backend
    node.rule_digest = body.rule_digest
    node.ipv6 = body.ipv6
    node.status_at = at
    node.last_seen = at
    node.registered_at = node.registered_at or at
    db.commit()
    return Response(status_code=204)


@router.post("/metrics", status_code=204)
def post_metrics(body: MetricsReport, agent: AgentDep, db: DbDep) -> Response:
    """Counters since the previous post, added to the node's 10 s and 1 min buckets."""
    node = _node(db, agent.instance_id, body)
    age = unix_now() - body.at.timestamp()
    if age > METRICS_PAST or age < -METRICS_FUTURE:
        raise BadInput("must be within the last day and not in the future", ["body", "at"])
    for i, row in enumerate(body.ports):
        if row.errors > row.requests:
            raise BadInput("more errors than requests", ["body", "ports", i, "errors"])
    metrics.record(db, node.id, body)
    node.last_seen = now()
    db.commit()
    return Response(status_code=204)


@router.get(
    "/config",
    response_model=NodeConfig,
    responses={304: {"description": "no change within `wait` seconds"}},
)
async def config(
    *,
    request: Request,
    agent: AgentDep,
    state: StateDep,
    app: Annotated[str, Query(max_length=63)],
    ip: Annotated[str, Query(max_length=64)],
    version: Annotated[int, Query(ge=0, le=2**62)] = 0,
    wait: Annotated[int, Query(ge=0, le=MAX_WAIT)] = 0,
) -> NodeConfig | Response:
    """The node's desired config as soon as its version differs from `version`; after
    `wait` seconds without a change, 304. A change wakes the poll at once (same replica:
    in process; other replicas: PostgreSQL NOTIFY)."""
    for name, check, value in (("app", values.app_name, app), ("ip", values.node_ip, ip)):
        try:
            check(value)
        except ValueError as exc:
            raise BadInput(str(exc), ["query", name]) from None
    console = _console_address(request)
    node_id = await run_in_threadpool(_node_id, state, agent.instance_id, app, ip)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    async with state.notifier.subscribe(node_id) as changed:
        while True:
            changed.clear()
            document = await run_in_threadpool(_document, state, node_id, console)
            if document.version != version:
                return document
            remaining = deadline - loop.time()
            if remaining <= 0:
                return Response(status_code=304)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)


def _console_address(request: Request) -> str | None:
    """host:port the agent reached the console at (its Host header)."""
    host = request.url.hostname
    if not host:
        return None
    port = request.url.port or (443 if request.url.scheme == "https" else 80)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _node_id(state: ConsoleState, instance_id: int, app: str, ip: str) -> int:
    with state.sessions() as db:
        found = find_app(db, instance_id, app, ["query", "app"])
        return find_node(db, found, ip, ["query", "ip"]).id


def _document(state: ConsoleState, node_id: int, console: str | None) -> NodeConfig:
    with state.sessions() as db:
        node = db.get(Node, node_id)
        if node is None:
            raise NotFound("this node was removed from its app", ["query", "ip"])
        return configdoc.node_config(db, node, console)
