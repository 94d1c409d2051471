"""Per-app interception parameters, governance limits and their records, environment info."""

from __future__ import annotations

import logging
import shlex
from typing import Annotated

from fastapi import APIRouter, Query, Request
from sqlalchemy import select

from console import configdoc, values
from console.api_apps import AppPath, find_app, find_node
from console.auth import ScopeDep
from console.errors import BadInput
from console.models import AccessKey, GovernanceChange, GovernanceLimit
from console.schemas import Governance, Params
from console.state import DbDep, StateDep, now
from console.views import EnvironmentOut, GovernanceChangeOut, GovernanceOut, ParamsOut

router = APIRouter(prefix="/api/v1", tags=["params"])
log = logging.getLogger("sofamesh.console")
INSTALL_SCRIPT = "scripts/sofamesh.sh"


@router.get("/apps/{name}/params", response_model=ParamsOut)
def get_params(name: AppPath, scope: ScopeDep, db: DbDep) -> ParamsOut:
    app = find_app(db, scope.instance_id, name, ["path", "name"])
    return ParamsOut(**configdoc.params_of(app))


@router.put("/apps/{name}/params", response_model=ParamsOut)
def put_params(
    name: AppPath, body: Params, scope: ScopeDep, db: DbDep, state: StateDep
) -> ParamsOut:
    """Replace the app's blacklists; every node of the app gets the new config."""
    app = find_app(db, scope.instance_id, name, ["path", "name"])
    new = body.model_dump()
    changed: list[int] = []
    if new != configdoc.params_of(app):
        app.params = new
        db.flush()
        changed = configdoc.bump_app(db, app.id)
    state.commit(db, changed)
    log.info("%s set the params of %s", scope.who, name)
    return ParamsOut(**configdoc.params_of(app))


@router.get("/apps/{name}/governance", response_model=GovernanceOut)
def get_governance(name: AppPath, scope: ScopeDep, db: DbDep) -> GovernanceOut:
    app = find_app(db, scope.instance_id, name, ["path", "name"])
    return GovernanceOut(limits=configdoc.limits_of(db, app))


@router.put("/apps/{name}/governance", response_model=GovernanceOut)
def put_governance(
    name: AppPath, body: Governance, scope: ScopeDep, db: DbDep, state: StateDep
) -> GovernanceOut:
    """Set max requests per app port (0 = unlimited); ports left out become 0. Every
    change is recorded (who, when, port, old -> new) (R-CO-3)."""
    app = find_app(db, scope.instance_id, name, ["path", "name"])
    wanted: dict[int, int] = {}
    for key, limit in body.limits.items():
        port = int(key)
        if port not in app.ports:
            raise BadInput(
                f"port {key} is not a port of app {name!r} ({', '.join(map(str, app.ports))})",
                ["body", "limits", key],
            )
        if port in wanted:
            raise BadInput(f"port {port} is listed twice", ["body", "limits", key])
        wanted[port] = limit
    stored = {
        row.port: row
        for row in db.execute(
            select(GovernanceLimit).where(GovernanceLimit.app_id == app.id)
        ).scalars()
    }
    at = now()
    changes = 0
    for port in sorted(app.ports):
        old = stored[port].max_requests if port in stored else 0
        new = wanted.get(port, 0)
        if old == new:
            continue
        changes += 1
        db.add(GovernanceChange(app_id=app.id, who=scope.who, at=at, port=port, old=old, new=new))
        if port in stored:
            stored[port].max_requests = new
        else:
            db.add(GovernanceLimit(app_id=app.id, port=port, max_requests=new))
    changed: list[int] = []
    if changes:
        db.flush()
        changed = configdoc.bump_app(db, app.id)
    state.commit(db, changed)
    log.info("%s changed %d governance limit(s) of %s", scope.who, changes, name)
    return GovernanceOut(limits=configdoc.limits_of(db, app))


@router.get("/apps/{name}/governance/changes", response_model=list[GovernanceChangeOut])
def governance_changes(name: AppPath, scope: ScopeDep, db: DbDep) -> list[GovernanceChangeOut]:
    """Newest change first; the ports of one change in port order."""
    app = find_app(db, scope.instance_id, name, ["path", "name"])
    rows = db.execute(
        select(GovernanceChange)
        .where(GovernanceChange.app_id == app.id)
        .order_by(GovernanceChange.at.desc(), GovernanceChange.port)
    ).scalars()
    return [
        GovernanceChangeOut(who=r.who, at=r.at, port=r.port, old=r.old, new=r.new) for r in rows
    ]


@router.get("/environment", response_model=EnvironmentOut)
def environment(
    request: Request,
    scope: ScopeDep,
    db: DbDep,
    app: Annotated[str, Query(max_length=63)],
    ip: Annotated[str | None, Query(max_length=64)] = None,
) -> EnvironmentOut:
    """Tenant, workspace, instance and the ready-to-copy install command for a node."""
    try:
        values.app_name(app)
    except ValueError as exc:
        raise BadInput(str(exc), ["query", "app"]) from None
    found = find_app(db, scope.instance_id, app, ["query", "app"])
    node_ip = find_node(db, found, ip, ["query", "ip"]).ip if ip is not None else None
    key = db.execute(
        select(AccessKey.key_id)
        .where(AccessKey.user_id == scope.user_id, AccessKey.instance_id == scope.instance_id)
        .order_by(AccessKey.created_at)
        .limit(1)
    ).scalar()
    console_url = str(request.base_url).rstrip("/")
    command = " ".join(
        [
            INSTALL_SCRIPT,
            "install",
            f"-t {shlex.quote(scope.tenant)}",
            f"-w {shlex.quote(scope.workspace)}",
            f"-i {shlex.quote(scope.instance)}",
            f"-n {shlex.quote(app)}",
            f"-a {key or '<access key id>'}",
            "-s '<secret: shown once at key creation>'",
            f"--console {shlex.quote(console_url)}",
        ]
    )
    return EnvironmentOut(
        tenant=scope.tenant,
        workspace=scope.workspace,
        instance_id=scope.instance,
        app=app,
        ip=node_ip,
        access_key_id=key,
        install_command=command,
    )
