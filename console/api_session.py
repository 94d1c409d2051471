"""Operator sessions, the instance they act in, and their own access keys."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from sqlalchemy import select

from console import admin, security
from console.auth import CSRF_COOKIE, SESSION_COOKIE, OperatorDep, Scope, ScopeDep, scope_of
from console.errors import Unauthorized
from console.models import Instance, OperatorSession, User, Workspace
from console.schemas import LoginRequest, ScopeRequest
from console.state import DbDep, StateDep, unix_now
from console.views import KeyCreated, KeyOut, ScopeOut, SessionOut

router = APIRouter(prefix="/api/v1", tags=["session"])
log = logging.getLogger("sofamesh.console")
# Checked against when the user is unknown, so both cases take as long.
_DUMMY_HASH = security.hash_password("not a password")


@router.post("/session", response_model=SessionOut)
def login(
    body: LoginRequest, request: Request, response: Response, db: DbDep, state: StateDep
) -> SessionOut:
    user = db.execute(select(User).where(User.name == body.username)).scalar()
    stored = user.password_hash if user else _DUMMY_HASH
    if not security.verify_password(body.password, stored) or user is None:
        log.info("login failed for %r", body.username)
        raise Unauthorized("wrong user name or password")
    token, csrf = security.new_token(), security.new_token()
    first = db.execute(select(Instance.id).order_by(Instance.id).limit(1)).scalar()
    db.add(
        OperatorSession(
            token_hash=security.token_hash(token),
            user_id=user.id,
            csrf_token=csrf,
            instance_id=first,
            expires_at=unix_now() + state.session_ttl,
        )
    )
    db.commit()
    secure = request.url.scheme == "https"
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=state.session_ttl,
        httponly=True,
        samesite="strict",
        secure=secure,
    )
    # Readable by the page's script, which echoes it in X-CSRF-Token (double submit).
    response.set_cookie(
        CSRF_COOKIE,
        csrf,
        max_age=state.session_ttl,
        httponly=False,
        samesite="strict",
        secure=secure,
    )
    log.info("user %s logged in", user.name)
    scope = scope_of(db, first, user.name, user.id) if first is not None else None
    return SessionOut(user=user.name, csrf_token=csrf, scope=_scope_out(scope))


@router.get("/session", response_model=SessionOut)
def current_session(op: OperatorDep, db: DbDep) -> SessionOut:
    row = db.get(OperatorSession, op.token_hash)
    assert row is not None
    scope = scope_of(db, op.instance_id, op.username, op.user_id) if op.instance_id else None
    return SessionOut(user=op.username, csrf_token=row.csrf_token, scope=_scope_out(scope))


@router.delete("/session", status_code=204)
def logout(op: OperatorDep, db: DbDep) -> Response:
    row = db.get(OperatorSession, op.token_hash)
    if row is not None:
        db.delete(row)
        db.commit()
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE)
    response.delete_cookie(CSRF_COOKIE)
    return response


@router.put("/session/scope", response_model=ScopeOut)
def select_scope(body: ScopeRequest, op: OperatorDep, db: DbDep) -> ScopeOut:
    instance = admin.find_instance(db, body.tenant, body.workspace, body.instance_id)
    row = db.get(OperatorSession, op.token_hash)
    assert row is not None
    row.instance_id = instance.id
    db.commit()
    return ScopeOut(tenant=body.tenant, workspace=body.workspace, instance_id=body.instance_id)


@router.get("/instances", response_model=list[ScopeOut])
def list_instances(op: OperatorDep, db: DbDep) -> list[ScopeOut]:
    rows = db.execute(
        select(Instance, Workspace).join(Workspace, Instance.workspace_id == Workspace.id)
    ).all()
    found = [
        ScopeOut(tenant=w.tenant.name, workspace=w.name, instance_id=i.instance_id) for i, w in rows
    ]
    return sorted(found, key=lambda s: (s.tenant, s.workspace, s.instance_id))


@router.get("/keys", response_model=list[KeyOut])
def list_keys(op: OperatorDep, db: DbDep) -> list[KeyOut]:
    user = db.get(User, op.user_id)
    assert user is not None
    return [
        KeyOut(
            key_id=k.key_id,
            tenant=k.tenant,
            workspace=k.workspace,
            instance_id=k.instance_id,
            created_at=k.created_at,
        )
        for k in admin.list_keys(db, user)
    ]


@router.post("/keys", response_model=KeyCreated, status_code=201)
def create_key(scope: ScopeDep, db: DbDep) -> KeyCreated:
    """A key for the current instance; the secret is in this answer and nowhere else."""
    user = db.get(User, scope.user_id)
    instance = db.get(Instance, scope.instance_id)
    assert user is not None and instance is not None
    created = admin.create_key(db, user, instance)
    db.commit()
    log.info("user %s created key %s", user.name, created.key_id)
    key = admin.list_keys(db, user)
    created_at = next(k.created_at for k in key if k.key_id == created.key_id)
    return KeyCreated(
        key_id=created.key_id,
        secret=created.secret,
        tenant=created.tenant,
        workspace=created.workspace,
        instance_id=created.instance_id,
        created_at=created_at,
    )


@router.delete("/keys/{key_id}", status_code=204)
def delete_key(
    key_id: Annotated[str, Path(pattern=security.KEY_ID_RE.pattern)], op: OperatorDep, db: DbDep
) -> Response:
    user = db.get(User, op.user_id)
    assert user is not None
    admin.delete_key(db, key_id, user)
    db.commit()
    log.info("user %s deleted key %s", user.name, key_id)
    return Response(status_code=204)


def _scope_out(scope: Scope | None) -> ScopeOut | None:
    if scope is None:
        return None
    return ScopeOut(tenant=scope.tenant, workspace=scope.workspace, instance_id=scope.instance)
