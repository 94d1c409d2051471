"""What agents call, every request signed (R-CO-6): register, config long-poll, status,
metrics. A key sees only its own instance: any other app or node is a 404.

The handlers run on the event loop: the signature is checked there (console.auth.agent)
and each request's database work is one job of console/agentdb.py (nonce, lookup, writes,
one commit shared with the other requests of its batch). Well-formed requests are answered
before they get here, by console/agentfast.py with the same jobs; these routes answer the
rest (and every refusal of the request itself) and describe the API in OpenAPI.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from console import agentfast, agentjobs, values
from console.agent_schemas import MetricsReport, RegisterRequest, StatusReport
from console.auth import AgentDep
from console.errors import BadInput
from console.state import StateDep
from console.views import NodeConfig, RegisterOut, WhoAmIOut

router = APIRouter(prefix="/api/v1/agent", tags=["agent"])
MAX_WAIT = 60
# Kept for callers of the old names; the checks live in console.agentjobs.
METRICS_PAST = agentjobs.METRICS_PAST
METRICS_FUTURE = agentjobs.METRICS_FUTURE


@router.get("/whoami", response_model=WhoAmIOut)
async def whoami(agent: AgentDep, state: StateDep) -> WhoAmIOut:
    """The key's scope, so `sofamesh install -t -w -i` can check what the operator typed
    against what the key may see and name the field that differs (R-CLI-1, R-SF-2)."""
    return WhoAmIOut(**await state.agentdb.run(agentjobs.whoami(state, agent)))


@router.post("/register", response_model=RegisterOut)
async def register(body: RegisterRequest, agent: AgentDep, state: StateDep) -> RegisterOut:
    work = agentjobs.register(state, agent, body, body.hostname)
    node_id, version = await state.agentdb.run(work)
    return RegisterOut(node_id=node_id, config_version=version)


@router.post("/status", status_code=204)
async def status(body: StatusReport, agent: AgentDep, state: StateDep) -> Response:
    await state.agentdb.run(agentjobs.status(state, agent, body))
    return Response(status_code=204)


@router.post("/metrics", status_code=204)
async def post_metrics(body: MetricsReport, agent: AgentDep, state: StateDep) -> Response:
    """Counters since the previous post, added to the node's 10 s and 1 min buckets."""
    await state.agentdb.run(agentjobs.metrics(state, agent, body))
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
) -> Any:
    """The node's desired config as soon as its version differs from `version`; after
    `wait` seconds without a change, 304. A change wakes the poll at once (same replica:
    in process; other replicas: PostgreSQL NOTIFY). A poll whose client goes away ends."""
    for name, check, value in (("app", values.app_name, app), ("ip", values.node_ip, ip)):
        try:
            check(value)
        except ValueError as exc:
            raise BadInput(str(exc), ["query", name]) from None
    query = agentfast.PollQuery(app, ip, version, wait)
    console = agentfast.console_address(request.scope)
    document = await agentfast.poll(state, agent, query, console, request.receive)
    if document is None:
        return Response(status_code=304)
    return Response(content=document, media_type="application/json")
