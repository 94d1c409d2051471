"""Hijack apps, their nodes and the per-node hijack switch (R-CO-2, R-CO-4)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Path, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from console import configdoc, values
from console.auth import ScopeDep
from console.errors import BadInput, Conflict, NotFound
from console.models import App, Node
from console.schemas import AppCreate, HijackBatch, HijackSwitch, NodeCreate
from console.state import ConsoleState, DbDep, StateDep, now
from console.views import AppOut, NodeOut

router = APIRouter(prefix="/api/v1", tags=["apps"])
log = logging.getLogger("sofamesh.console")

AppPath = Annotated[str, Path(pattern=values.APP_NAME_RE.pattern)]
IpPath = Annotated[str, Path(max_length=64)]


def find_app(db: Session, instance_id: int, name: str, loc: list[str | int]) -> App:
    app = db.execute(select(App).where(App.instance_id == instance_id, App.name == name)).scalar()
    if app is None:
        raise NotFound(f"no app {name!r} in this instance", loc)
    return app


def find_node(db: Session, app: App, ip: str, loc: list[str | int]) -> Node:
    try:
        address = values.node_ip(ip)
    except ValueError as exc:
        raise BadInput(str(exc), loc) from None
    node = db.execute(select(Node).where(Node.app_id == app.id, Node.ip == address)).scalar()
    if node is None:
        raise NotFound(f"{address} is not a node of app {app.name!r}", loc)
    return node


def app_out(db: Session, app: App) -> AppOut:
    nodes = db.execute(select(Node).where(Node.app_id == app.id).order_by(Node.id)).scalars()
    return AppOut(
        name=app.name,
        ports=sorted(app.ports),
        nodes=[node_out(n) for n in nodes],
        created_at=app.created_at,
    )


def node_out(node: Node) -> NodeOut:
    return NodeOut(
        ip=node.ip,
        hijack_enabled=node.hijack_enabled,
        config_version=node.config_version,
        registered=node.registered_at is not None,
        hostname=node.hostname,
    )


def _add_nodes(db: Session, app: App, ips: list[str], loc: str) -> None:
    taken = db.execute(
        select(Node.ip, App.name)
        .join(App, Node.app_id == App.id)
        .where(Node.instance_id == app.instance_id, Node.ip.in_(ips))
    ).first()
    if taken is not None:
        index = ips.index(taken[0])
        where: list[str | int] = ["body", loc, index] if loc == "nodes" else ["body", loc]
        raise Conflict(f"{taken[0]} is already a node of app {taken[1]!r}", where)
    for ip in ips:
        db.add(
            Node(
                app_id=app.id,
                instance_id=app.instance_id,
                ip=ip,
                hijack_enabled=False,
                config_version=configdoc.initial_version(),
                created_at=now(),
            )
        )


def _commit_switch(db: Session, state: ConsoleState, changed: list[int], nodes: list[Node]) -> None:
    db.flush()
    # Incremented in SQL, so concurrent changes through two replicas never share a version.
    configdoc.bump_nodes(db, changed)
    state.commit(db, changed)
    for node in nodes:
        db.refresh(node)


@router.get("/apps", response_model=list[AppOut])
def list_apps(scope: ScopeDep, db: DbDep) -> list[AppOut]:
    apps = db.execute(
        select(App).where(App.instance_id == scope.instance_id).order_by(App.name)
    ).scalars()
    return [app_out(db, app) for app in apps]


@router.post("/apps", response_model=AppOut, status_code=201)
def create_app(body: AppCreate, scope: ScopeDep, db: DbDep) -> AppOut:
    exists = select(App).where(App.instance_id == scope.instance_id, App.name == body.name)
    if db.execute(exists).scalar() is not None:
        raise Conflict(f"app {body.name!r} exists", ["body", "name"])
    app = App(
        instance_id=scope.instance_id,
        name=body.name,
        ports=sorted(body.ports),
        params=dict(configdoc.EMPTY_PARAMS),
        created_at=now(),
    )
    db.add(app)
    db.flush()
    _add_nodes(db, app, body.nodes, "nodes")
    db.commit()
    log.info("%s created app %s", scope.who, app.name)
    return app_out(db, app)


@router.get("/apps/{name}", response_model=AppOut)
def get_app(name: AppPath, scope: ScopeDep, db: DbDep) -> AppOut:
    return app_out(db, find_app(db, scope.instance_id, name, ["path", "name"]))


@router.delete("/apps/{name}", status_code=204)
def delete_app(name: AppPath, scope: ScopeDep, db: DbDep) -> Response:
    app = find_app(db, scope.instance_id, name, ["path", "name"])
    count = db.execute(
        select(func.count()).select_from(Node).where(Node.app_id == app.id)
    ).scalar_one()
    if count:
        raise Conflict(
            f"app {name!r} has {count} node(s): remove its nodes first", ["path", "name"]
        )
    db.delete(app)
    db.commit()
    log.info("%s deleted app %s", scope.who, name)
    return Response(status_code=204)


@router.post("/apps/{name}/nodes", response_model=NodeOut, status_code=201)
def add_node(name: AppPath, body: NodeCreate, scope: ScopeDep, db: DbDep) -> NodeOut:
    app = find_app(db, scope.instance_id, name, ["path", "name"])
    _add_nodes(db, app, [body.ip], "ip")
    db.commit()
    return node_out(find_node(db, app, body.ip, ["body", "ip"]))


@router.delete("/apps/{name}/nodes/{ip}", status_code=204)
def remove_node(name: AppPath, ip: IpPath, scope: ScopeDep, db: DbDep, state: StateDep) -> Response:
    app = find_app(db, scope.instance_id, name, ["path", "name"])
    node = find_node(db, app, ip, ["path", "ip"])
    node_id = node.id
    db.delete(node)
    # Wakes the node's long-poll, which then answers 404: the agent learns it was removed.
    state.commit(db, [node_id])
    return Response(status_code=204)


@router.put("/apps/{name}/nodes/{ip}/hijack", response_model=NodeOut)
def switch_hijack(
    *, name: AppPath, ip: IpPath, body: HijackSwitch, scope: ScopeDep, db: DbDep, state: StateDep
) -> NodeOut:
    app = find_app(db, scope.instance_id, name, ["path", "name"])
    node = find_node(db, app, ip, ["path", "ip"])
    changed = []
    if node.hijack_enabled != body.enabled:
        node.hijack_enabled = body.enabled
        changed.append(node.id)
    _commit_switch(db, state, changed, [node])
    log.info("%s switched hijack %s on %s/%s", scope.who, "on" if body.enabled else "off", name, ip)
    return node_out(node)


@router.post("/apps/{name}/hijack:batch", response_model=list[NodeOut])
def switch_batch(
    name: AppPath, body: HijackBatch, scope: ScopeDep, db: DbDep, state: StateDep
) -> list[NodeOut]:
    """Switch several nodes at once: all of them or (if one IP is not a node) none."""
    app = find_app(db, scope.instance_id, name, ["path", "name"])
    nodes = [find_node(db, app, ip, ["body", "ips", i]) for i, ip in enumerate(body.ips)]
    changed = []
    for node in nodes:
        if node.hijack_enabled != body.enabled:
            node.hijack_enabled = body.enabled
            changed.append(node.id)
    _commit_switch(db, state, changed, nodes)
    log.info("%s switched hijack on %d node(s) of %s", scope.who, len(changed), name)
    return [node_out(n) for n in nodes]
