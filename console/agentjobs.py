"""The database part of each agent request, as one job for console/agentdb.py.

Every job starts with `auth.admit` (the nonce, in the same transaction) and then finds the
node by (instance, app, ip). The statements are plain SQL that SQLite (3.35+) and
PostgreSQL both accept, written once: building SQLAlchemy constructs per request (with
their cache keys) cost more than running them. Refusals are raised before any write of the
job (the contract of console/agentdb.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from console import configdoc, values
from console.agent_schemas import MetricsReport, NodeRef, StatusReport
from console.agentdb import Db, Sql
from console.auth import ADMIT_SQL, Agent, admit, nonce_params, refuse
from console.errors import BadInput, NotFound
from console.models import RES_COARSE, RES_FINE
from console.state import ConsoleState, now, unix_now

# Metrics may be posted late (R-AG-7: catch up after an outage), but not beyond what is kept.
METRICS_PAST = 86400
METRICS_FUTURE = 300

Loc = list[str | int]


# The node (of an app of the key's instance) that a request names, matched on the
# (instance_id, ip) unique index; the ip is canonical (console.values.node_ip).
_NODE_MATCH = (
    "instance_id = :instance AND ip = :ip "
    "AND app_id = (SELECT id FROM apps WHERE instance_id = :instance AND name = :app)"
)
_FIND_NODE = Sql(" ".join(("SELECT id, config_version FROM nodes WHERE", _NODE_MATCH)))
_APP_EXISTS = Sql("SELECT 1 FROM apps WHERE instance_id = :instance AND name = :app")
_REGISTER = Sql(
    " ".join((
        "UPDATE nodes SET hostname = :hostname, last_seen = :at,",
        "registered_at = COALESCE(registered_at, :at) WHERE", _NODE_MATCH,
        "RETURNING id, config_version",
    )),
    "at",
)  # fmt: skip
_STATUS = Sql(
    " ".join((
        "UPDATE nodes SET hostname = :hostname, sidecar_status = :sidecar_status,",
        "healthy = :healthy, sidecar_version = :version, sidecar_created_at = :created_at,",
        "backend = :backend, rule_digest = :rule_digest, ipv6 = :ipv6, status_at = :at,",
        "last_seen = :at, registered_at = COALESCE(registered_at, :at) WHERE", _NODE_MATCH,
    )),
    "at",
    "created_at",
)  # fmt: skip
_SEEN = Sql(" ".join(("UPDATE nodes SET last_seen = :at WHERE", _NODE_MATCH, "RETURNING id")), "at")
_COUNTERS = (
    "req_in", "err_in", "rt_in", "req_out", "err_out", "rt_out", "bytes_in", "bytes_out",
    "samples", "cpu_sum", "mem_sum", "load1_sum", "net_in", "net_out",
)  # fmt: skip
# Both dialects spell an upsert alike; one statement, executed for both resolutions.
_BUCKET = Sql(
    " ".join((
        "INSERT INTO metric_buckets (node_id, res, t,", ", ".join(_COUNTERS), ")",
        "VALUES (:node_id, :res, :t,", ", ".join(":" + c for c in _COUNTERS), ")",
        "ON CONFLICT (node_id, res, t) DO UPDATE SET",
        ", ".join(" ".join((c, "= metric_buckets." + c, "+ excluded." + c)) for c in _COUNTERS),
    ))
)  # fmt: skip
# PostgreSQL: a whole job in one statement (one round trip, instead of one per step).
# Data-modifying CTEs run in order of need and all of them run; each write is gated on the
# nonce having been recorded (`n`), so a refused request writes nothing but that.
_ADMITTED = " ".join(("n AS (", ADMIT_SQL, "RETURNING 1)"))
_PG_STATUS = Sql(
    " ".join((
        "WITH", _ADMITTED, ", u AS (",
        "UPDATE nodes SET hostname = :hostname, sidecar_status = :sidecar_status,",
        "healthy = :healthy, sidecar_version = :version, sidecar_created_at = :created_at,",
        "backend = :backend, rule_digest = :rule_digest, ipv6 = :ipv6, status_at = :at,",
        "last_seen = :at, registered_at = COALESCE(registered_at, :at) WHERE", _NODE_MATCH,
        "AND EXISTS (SELECT 1 FROM n) RETURNING id)",
        "SELECT (SELECT count(*) FROM n), (SELECT count(*) FROM u)",
    )),
    "at",
    "created_at",
)  # fmt: skip
_PG_METRICS = Sql(
    " ".join((
        "WITH", _ADMITTED, ", u AS (",
        "UPDATE nodes SET last_seen = :at WHERE", _NODE_MATCH,
        "AND EXISTS (SELECT 1 FROM n) RETURNING id),",
        "b AS (INSERT INTO metric_buckets (node_id, res, t,", ", ".join(_COUNTERS), ")",
        "SELECT u.id, r.res, r.t,", ", ".join(":" + c for c in _COUNTERS), "FROM u CROSS JOIN",
        "(VALUES (" + str(RES_FINE) + ", CAST(:t_fine AS BIGINT)),",
        "(" + str(RES_COARSE) + ", CAST(:t_coarse AS BIGINT))) AS r (res, t)",
        "ON CONFLICT (node_id, res, t) DO UPDATE SET",
        ", ".join(" ".join((c, "= metric_buckets." + c, "+ excluded." + c)) for c in _COUNTERS),
        "RETURNING 1)",
        "SELECT (SELECT count(*) FROM n), (SELECT count(*) FROM u)",
    )),
    "at",
)  # fmt: skip
_PG_POLL = Sql(
    " ".join((
        "WITH", _ADMITTED,
        "SELECT (SELECT count(*) FROM n),",
        "(SELECT id FROM nodes WHERE", _NODE_MATCH, "),",
        "(SELECT config_version FROM nodes WHERE", _NODE_MATCH, ")",
    ))
)  # fmt: skip
_VERSION = Sql("SELECT config_version FROM nodes WHERE id = :id")
_NODE_APP = Sql(
    "SELECT n.config_version, n.hijack_enabled, a.id, a.ports, a.params "
    "FROM nodes n JOIN apps a ON a.id = n.app_id WHERE n.id = :id"
)
_LIMITS = Sql("SELECT port, max_requests FROM governance_limits WHERE app_id = :app_id")
_SCOPE = Sql(
    "SELECT t.name AS tenant, w.name AS workspace, i.instance_id AS instance "
    "FROM instances i JOIN workspaces w ON w.id = i.workspace_id "
    "JOIN tenants t ON t.id = w.tenant_id WHERE i.id = :instance"
)


def _match(agent: Agent, ref_app: str, ref_ip: str, loc: Loc) -> dict[str, Any]:
    try:
        ip = values.node_ip(ref_ip)
    except ValueError as exc:
        raise BadInput(str(exc), [*loc, "ip"]) from None
    return {"instance": agent.instance_id, "app": ref_app, "ip": ip}


def _missing(db: Db, match: dict[str, Any], loc: Loc) -> NotFound:
    """Which of app and ip is unknown (the same answers as console.api_apps)."""
    if db.execute(_APP_EXISTS, match).fetchone() is None:
        return NotFound(f"no app {match['app']!r} in this instance", [*loc, "app"])
    return NotFound(f"{match['ip']} is not a node of app {match['app']!r}", [*loc, "ip"])


def whoami(state: ConsoleState, agent: Agent) -> Callable[[Db], dict[str, str]]:
    def work(db: Db) -> dict[str, str]:
        admit(db, state, agent)
        tenant, workspace, instance = db.execute(_SCOPE, {"instance": agent.instance_id}).fetchone()
        return {
            "key_id": agent.key_id,
            "tenant": tenant,
            "workspace": workspace,
            "instance_id": instance,
        }

    return work


def register(
    state: ConsoleState, agent: Agent, body: NodeRef, hostname: str
) -> Callable[[Db], tuple[int, int]]:
    def work(db: Db) -> tuple[int, int]:
        admit(db, state, agent)
        match = _match(agent, body.app, body.ip, ["body"])
        # fetchall: a RETURNING statement is done only once its rows are read.
        rows = db.execute(_REGISTER, {**match, "hostname": hostname, "at": now()}).fetchall()
        if not rows:
            raise _missing(db, match, ["body"])
        node_id, version = rows[0]
        return node_id, version

    return work


def status(state: ConsoleState, agent: Agent, body: StatusReport) -> Callable[[Db], None]:
    def work(db: Db) -> None:
        if db.dialect_name != "postgresql":
            admit(db, state, agent)
        match = _match(agent, body.app, body.ip, ["body"])
        params = {
            **match,
            "hostname": body.hostname,
            "sidecar_status": body.sidecar_status,
            "healthy": body.healthy,
            "version": body.version,
            "created_at": body.created_at,
            "backend": body.backend,
            "rule_digest": body.rule_digest,
            "ipv6": body.ipv6,
            "at": now(),
        }
        if db.dialect_name == "postgresql":
            admitted, updated = db.execute(_PG_STATUS, {**params, **nonce_params(agent)}).fetchone()
            if admitted != 1:
                refuse(db, state, agent)
        else:
            updated = db.execute(_STATUS, params).rowcount
        if updated != 1:
            raise _missing(db, match, ["body"])

    return work


def _metrics_problem(body: MetricsReport) -> BadInput | None:
    age = unix_now() - body.at.timestamp()
    if age > METRICS_PAST or age < -METRICS_FUTURE:
        return BadInput("must be within the last day and not in the future", ["body", "at"])
    for i, row in enumerate(body.ports):
        if row.errors > row.requests:
            return BadInput("more errors than requests", ["body", "ports", i, "errors"])
    return None


def metrics(state: ConsoleState, agent: Agent, body: MetricsReport) -> Callable[[Db], None]:
    """Counters since the previous post, added to the node's 10 s and 1 min buckets."""

    def work(db: Db) -> None:
        problem = _metrics_problem(body)
        if db.dialect_name == "postgresql" and problem is None:
            match = _match(agent, body.app, body.ip, ["body"])
            _pg_metrics(db, state, agent, body, match)
            return
        admit(db, state, agent)
        match = _match(agent, body.app, body.ip, ["body"])
        if problem is not None:
            # An unknown node is named first, as before the checks of the body.
            if db.execute(_FIND_NODE, match).fetchone() is None:
                raise _missing(db, match, ["body"])
            raise problem
        rows = db.execute(_SEEN, {**match, "at": now()}).fetchall()
        if not rows:
            raise _missing(db, match, ["body"])
        node_id = rows[0][0]
        counters = bucket_counters(body)
        at = int(body.at.timestamp())
        db.executemany(
            _BUCKET,
            [{"node_id": node_id, "res": res, "t": at - at % res, **counters}
             for res in (RES_FINE, RES_COARSE)],
        )  # fmt: skip

    return work


def _pg_metrics(
    db: Db, state: ConsoleState, agent: Agent, body: MetricsReport, match: dict[str, Any]
) -> None:
    at = int(body.at.timestamp())
    params = {
        **match,
        **nonce_params(agent),
        **bucket_counters(body),
        "at": now(),
        "t_fine": at - at % RES_FINE,
        "t_coarse": at - at % RES_COARSE,
    }
    admitted, updated = db.execute(_PG_METRICS, params).fetchone()
    if admitted != 1:
        refuse(db, state, agent)
    if updated != 1:
        raise _missing(db, match, ["body"])


def bucket_counters(report: MetricsReport) -> dict[str, Any]:
    inbound = [p for p in report.ports if p.direction == "inbound"]
    outbound = [p for p in report.ports if p.direction == "outbound"]
    return {
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


# --- config long-poll ------------------------------------------------------------------------


def poll_start(
    state: ConsoleState, agent: Agent, ref: tuple[str, str], version: int, console: str | None
) -> Callable[[Db], tuple[int, bytes | None]]:
    """(node id, the document when its version differs from `version`, else None)."""

    def work(db: Db) -> tuple[int, bytes | None]:
        if db.dialect_name == "postgresql":
            match = _match(agent, *ref, ["query"])
            admitted, node_id, current = db.execute(
                _PG_POLL, {**match, **nonce_params(agent)}
            ).fetchone()
            if admitted != 1:
                refuse(db, state, agent)
            if node_id is None:
                raise _missing(db, match, ["query"])
        else:
            admit(db, state, agent)
            match = _match(agent, *ref, ["query"])
            row = db.execute(_FIND_NODE, match).fetchone()
            if row is None:
                raise _missing(db, match, ["query"])
            node_id, current = row
        if current == version:
            return node_id, None
        return node_id, document(db, state, node_id, console)

    return work


def poll_again(
    state: ConsoleState, node_id: int, version: int, console: str | None
) -> Callable[[Db], bytes | None]:
    """After a wake-up or at the end of the wait: the document if the version moved."""

    def work(db: Db) -> bytes | None:
        row = db.execute(_VERSION, {"id": node_id}).fetchone()
        if row is None:
            raise NotFound("this node was removed from its app", ["query", "ip"])
        if row[0] == version:
            return None
        return document(db, state, node_id, console)

    return work


def document(db: Db, state: ConsoleState, node_id: int, console: str | None) -> bytes:
    """The node's config as JSON (console.views.NodeConfig), kept per node until its
    version moves. Every change of what the document holds bumps the version (console/
    configdoc.py), so (node, version, console address) names one document. The version is
    read before the rest: read in that order, a change committed in between can only give
    newer content under an older version, which the agent then fetches again."""
    row = db.execute(_NODE_APP, {"id": node_id}).fetchone()
    if row is None:
        raise NotFound("this node was removed from its app", ["query", "ip"])
    version, hijack_enabled, app_id, ports, params = row
    cached = state.documents.get(node_id)
    if cached is not None and cached[0] == version and cached[1] == console:
        return cached[2]
    stored = dict(db.execute(_LIMITS, {"app_id": app_id}).fetchall())
    # JSON columns: SQLite hands back their text, psycopg the parsed value.
    ports = json.loads(ports) if isinstance(ports, str) else ports
    params = json.loads(params) if isinstance(params, str) else params
    lists = {key: list((params or {}).get(key, [])) for key in configdoc.EMPTY_PARAMS}
    body = json.dumps(
        {
            "version": version,
            "hijack_enabled": bool(hijack_enabled),
            "hijack": configdoc.hijack_document(lists, console),
            "sidecar": {"limits": {str(port): stored.get(port, 0) for port in sorted(ports)}},
        },
        separators=(",", ":"),
    ).encode()
    state.documents[node_id] = (version, console, body)
    return body
