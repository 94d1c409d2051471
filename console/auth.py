"""Who is asking: operators (session cookie + CSRF header) and agents (signed requests)."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from console import security
from console.errors import ConsoleError, Forbidden, Unauthorized
from console.models import AccessKey, Instance, Nonce, OperatorSession, Workspace
from console.state import ConsoleState, DbDep, StateDep, unix_now

SESSION_COOKIE = "sofamesh_session"
CSRF_COOKIE = "sofamesh_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

log = logging.getLogger("sofamesh.console")


@dataclass(frozen=True)
class Operator:
    user_id: int
    username: str
    token_hash: str
    instance_id: int | None


@dataclass(frozen=True)
class Scope:
    """The tenant/workspace/instance a request acts in (an instance row id and its names)."""

    instance_id: int
    tenant: str
    workspace: str
    instance: str
    who: str
    user_id: int | None


def operator(request: Request, db: DbDep) -> Operator:
    token = request.cookies.get(SESSION_COOKIE, "")
    if not token:
        raise Unauthorized("log in first: POST /api/v1/session")
    row = db.get(OperatorSession, security.token_hash(token))
    if row is None or row.expires_at < unix_now():
        raise Unauthorized("session expired or unknown: log in again")
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not sent or not hmac.compare_digest(sent, row.csrf_token):
            raise Forbidden(f"missing or wrong {CSRF_HEADER} header", ["header", CSRF_HEADER])
    return Operator(row.user_id, row.user.name, row.token_hash, row.instance_id)


OperatorDep = Annotated[Operator, Depends(operator)]


def scope_of(db: Session, instance_id: int, who: str, user_id: int | None) -> Scope:
    row = db.execute(
        select(Instance, Workspace)
        .join(Workspace, Instance.workspace_id == Workspace.id)
        .where(Instance.id == instance_id)
    ).one()
    instance, workspace = row
    return Scope(
        instance.id, workspace.tenant.name, workspace.name, instance.instance_id, who, user_id
    )


def operator_scope(op: OperatorDep, db: DbDep) -> Scope:
    if op.instance_id is None:
        raise ConsoleError(
            "no instance selected: PUT /api/v1/session/scope {tenant, workspace, instance_id}",
            ["scope"],
        )
    return scope_of(db, op.instance_id, op.username, op.user_id)


ScopeDep = Annotated[Scope, Depends(operator_scope)]


@dataclass(frozen=True)
class Agent:
    key_id: str
    instance_id: int


async def agent(request: Request, state: StateDep) -> Agent:
    """Verify the request signature (R-CO-6). Every failure is a 401 with a reason that
    says nothing about other keys; the secret is never logged."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        signed = security.SignedHeaders.parse(headers)
    except ValueError as exc:
        raise Unauthorized(str(exc)) from None
    if not signed.is_fresh():
        raise Unauthorized("stale timestamp")
    body = await request.body()
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    message = security.string_to_sign(
        method=request.method,
        path=raw_path.decode("latin-1"),
        raw_query=request.url.query,
        body=body,
        timestamp=str(signed.timestamp),
        nonce=signed.nonce,
    )
    return await run_in_threadpool(_check_key, state, signed, message)


def _check_key(state: ConsoleState, signed: security.SignedHeaders, message: bytes) -> Agent:
    with state.sessions() as db:
        key = db.execute(select(AccessKey).where(AccessKey.key_id == signed.key_id)).scalar()
        expected = security.signature(key.secret if key else "x", message)
        if key is None or not hmac.compare_digest(expected, signed.signature):
            log.info("agent request rejected: unknown key or bad signature (key %s)", signed.key_id)
            raise Unauthorized("unknown key or bad signature")
        now = unix_now()
        db.add(
            Nonce(
                key_id=key.key_id,
                nonce=signed.nonce,
                expires_at=max(now, signed.timestamp) + security.SIGNATURE_WINDOW + 5,
            )
        )
        try:
            db.commit()
        except IntegrityError:
            db.rollback()
            log.info("agent request rejected: replayed nonce for key %s", key.key_id)
            raise Unauthorized("replayed nonce") from None
        return Agent(key.key_id, key.instance_id)


AgentDep = Annotated[Agent, Depends(agent)]


def purge_expired(db: Session) -> None:
    now = unix_now()
    db.execute(delete(Nonce).where(Nonce.expires_at < now))
    db.execute(delete(OperatorSession).where(OperatorSession.expires_at < now))
    db.commit()
