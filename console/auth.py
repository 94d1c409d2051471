"""Who is asking: operators (session cookie + CSRF header) and agents (signed requests)."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

from fastapi import Depends, Request
from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

from console import security
from console.agentdb import Db, Sql
from console.errors import ClientGone, ConsoleError, Forbidden, Unauthorized
from console.keycache import KeyRow
from console.models import Instance, Nonce, OperatorSession, Workspace
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
    """A request whose signature checked out against the key's secret. It is admitted
    only by `admit`, in the transaction of its own database work: the key must still
    exist there and the nonce must be new."""

    key_id: str
    instance_id: int
    nonce: str
    # Until when the nonce is remembered (unix seconds).
    nonce_expires: int


_KEY_ROW = Sql("SELECT secret, instance_id FROM access_keys WHERE key_id = :key_id")
_KEY_EXISTS = Sql("SELECT 1 FROM access_keys WHERE key_id = :key_id")
# Records the nonce, only while the key exists; ON CONFLICT makes a replay a no-op
# (rowcount 0) instead of an error that would end the batch's transaction. Replicas on
# PostgreSQL share the table: the second insert of a nonce waits for the first's commit.
# The casts give PostgreSQL one type for a parameter used twice.
ADMIT_SQL = (
    "INSERT INTO nonces (key_id, nonce, expires_at) "
    "SELECT CAST(:key_id AS VARCHAR), CAST(:nonce AS VARCHAR), CAST(:expires_at AS BIGINT) "
    "WHERE EXISTS (SELECT 1 FROM access_keys WHERE key_id = CAST(:key_id AS VARCHAR)) "
    "ON CONFLICT (key_id, nonce) DO NOTHING"
)
_ADMIT = Sql(ADMIT_SQL)


def _load_key(key_id: str) -> Callable[[Db], KeyRow | None]:
    def work(db: Db) -> KeyRow | None:
        row = db.execute(_KEY_ROW, {"key_id": key_id}).fetchone()
        return None if row is None else KeyRow(row[0], row[1])

    return work


async def agent(request: Request, state: StateDep) -> Agent:
    """Verify the request signature (R-CO-6). Every failure is a 401 with a reason that
    says nothing about other keys; the secret is never logged. Runs on the event loop: the
    key comes from the cache (loaded once); the nonce is recorded by `admit`."""
    # The last of repeated headers counts (as it always has).
    headers = {k.lower(): v for k, v in request.headers.items()}
    signed = signed_headers(headers)
    body = await _body(request, headers)
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    message = signed_message(signed, request.method, raw_path, request.url.query, body)
    key = state.keys.get(signed.key_id)
    if key is None:
        key = await state.agentdb.run(_load_key(signed.key_id))
        if key is not None:
            state.keys.put(signed.key_id, key)
    found = verified(key, signed, message)
    if found is None:
        log.info("agent request rejected: unknown key or bad signature (key %s)", signed.key_id)
        raise Unauthorized("unknown key or bad signature")
    return found


def signed_headers(headers: dict[str, str]) -> security.SignedHeaders:
    """The signature headers (`headers` keyed in lower case), well-formed and fresh."""
    try:
        signed = security.SignedHeaders.parse(headers)
    except ValueError as exc:
        raise Unauthorized(str(exc)) from None
    if not signed.is_fresh():
        raise Unauthorized("stale timestamp")
    return signed


def signed_message(
    signed: security.SignedHeaders, method: str, raw_path: bytes, raw_query: str, body: bytes
) -> bytes:
    return security.string_to_sign(
        method=method,
        path=raw_path.decode("latin-1"),
        raw_query=raw_query,
        body=body,
        timestamp=str(signed.timestamp),
        nonce=signed.nonce,
    )


def verified(key: KeyRow | None, signed: security.SignedHeaders, message: bytes) -> Agent | None:
    """The agent when the signature is the key's (a missing key costs the same HMAC)."""
    expected = security.signature(key.secret if key else "x", message)
    if key is None or not hmac.compare_digest(expected, signed.signature):
        return None
    expires = max(unix_now(), signed.timestamp) + security.SIGNATURE_WINDOW + 5
    return Agent(signed.key_id, key.instance_id, signed.nonce, expires)


async def _body(request: Request, headers: dict[str, str]) -> bytes:
    """The body as sent; a request without one (the long-poll GET) is not read at all, so
    its `receive` stays free to report the client going away."""
    if "content-length" not in headers and "transfer-encoding" not in headers:
        return b""
    try:
        return await request.body()
    except ClientDisconnect:
        raise ClientGone() from None


def admit(db: Db, state: ConsoleState, agent: Agent) -> None:
    """First step of every agent job: record the nonce in the job's transaction. A replay
    (on this or another replica) or a key deleted since it was cached is refused."""
    if db.execute(_ADMIT, nonce_params(agent)).rowcount != 1:
        refuse(db, state, agent)


def nonce_params(agent: Agent) -> dict[str, Any]:
    return {"key_id": agent.key_id, "nonce": agent.nonce, "expires_at": agent.nonce_expires}


def refuse(db: Db, state: ConsoleState, agent: Agent) -> NoReturn:
    """Why a nonce was not recorded: the key is gone, or the nonce was used before."""
    if db.execute(_KEY_EXISTS, {"key_id": agent.key_id}).fetchone() is None:
        state.keys.forget(agent.key_id)
        log.info("agent request rejected: unknown key or bad signature (key %s)", agent.key_id)
        raise Unauthorized("unknown key or bad signature")
    log.info("agent request rejected: replayed nonce for key %s", agent.key_id)
    raise Unauthorized("replayed nonce")


AgentDep = Annotated[Agent, Depends(agent)]


def purge_expired(db: Session) -> None:
    now = unix_now()
    db.execute(delete(Nonce).where(Nonce.expires_at < now))
    db.execute(delete(OperatorSession).where(OperatorSession.expires_at < now))
    db.commit()
