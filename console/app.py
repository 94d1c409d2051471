"""The FastAPI application: routers, error rendering, background upkeep, change listener."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp

from console import (
    api_agent,
    api_apps,
    api_monitor,
    api_params,
    api_session,
    api_traffic,
    auth,
    metrics,
    rendering,
    web,
)
from console.agentfast import AgentFastPath
from console.errors import ConsoleError
from console.notify import listen
from console.state import ConsoleState, StateDep
from console.views import Health

log = logging.getLogger("sofamesh.console")
UPKEEP_EVERY = 10.0
# Nonces pile up at the agents' request rate: purged every round, each delete stays small
# (it holds SQLite's write lock while it runs).
PURGE_EVERY = 1  # upkeep rounds


def create_app(state: ConsoleState) -> FastAPI:
    app = FastAPI(
        title="sofamesh console",
        version="1",
        summary="Control plane of sofamesh: apps, nodes, hijack switches, parameters, "
        "governance, sidecar status and metrics.",
        docs_url=None,
        redoc_url=None,
        lifespan=_lifespan,
    )
    app.state.console = state
    # Routes are matched in order: the agents' few routes, which take nearly every request,
    # come first.
    for module in (api_agent, api_session, api_apps, api_params, api_monitor, api_traffic, web):
        app.include_router(module.router)
    app.add_api_route(
        "/api/v1/health", health, methods=["GET"], response_model=Health, tags=["health"]
    )
    app.add_exception_handler(ConsoleError, _console_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(IntegrityError, _integrity_error)
    app.add_exception_handler(DataError, _data_error)
    return app


def asgi_app(state: ConsoleState) -> ASGIApp:
    """What uvicorn serves: the agents' fast path in front of the FastAPI app."""
    return AgentFastPath(create_app(state), state)


def health(state: StateDep) -> Health:
    """Liveness, database reachability and open long-polls (no authentication)."""
    waiting = state.notifier.waiting()
    try:
        with state.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError:
        return Health(status="degraded", database="unreachable", long_polls=waiting)
    return Health(status="ok", database=state.engine.dialect.name, long_polls=waiting)


async def _console_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ConsoleError)
    return rendering.console_error(exc)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's shape without `input` (it could echo a password back)."""
    assert isinstance(exc, RequestValidationError)
    detail: list[dict[str, Any]] = [
        {
            "loc": list(e.get("loc", ())),
            "msg": str(e.get("msg", "")).removeprefix("Value error, "),
            "type": e.get("type", ""),
        }
        for e in exc.errors()
    ]
    return JSONResponse({"detail": detail}, status_code=422)


async def _integrity_error(_request: Request, _exc: Exception) -> JSONResponse:
    return rendering.integrity_error()


async def _data_error(_request: Request, _exc: Exception) -> JSONResponse:
    """A value the validators let through but the database cannot hold (a safety net)."""
    return rendering.data_error()


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ConsoleState = app.state.console
    state.notifier.bind(asyncio.get_running_loop())
    state.agentdb.start(asyncio.get_running_loop())
    tasks = [asyncio.create_task(_upkeep(state), name="upkeep")]
    if state.engine.dialect.name == "postgresql":
        ready = asyncio.Event()
        tasks.append(asyncio.create_task(listen(state.engine, state.notifier, ready)))
        # Serve only once changes from other replicas can reach this one's long-polls.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), 10)
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await run_in_threadpool(state.agentdb.stop)


async def _upkeep(state: ConsoleState) -> None:
    """Sidecar snapshots, expired nonces, sessions and old buckets, every 10 s."""
    rounds = 0
    while True:
        try:
            await run_in_threadpool(_snapshot, state)
            if rounds % PURGE_EVERY == 0:
                await run_in_threadpool(_purge, state)
        except asyncio.CancelledError:
            raise
        except Exception:  # one failed round must not end upkeep for good
            log.exception("upkeep round failed")
        rounds += 1
        await asyncio.sleep(UPKEEP_EVERY)


def _snapshot(state: ConsoleState) -> None:
    with state.sessions() as db:
        metrics.snapshot(db)


def _purge(state: ConsoleState) -> None:
    with state.sessions() as db:
        metrics.purge(db)
        auth.purge_expired(db)
