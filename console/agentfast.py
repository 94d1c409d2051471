"""The agents' well-formed requests, answered without FastAPI's routing and dependencies.

Nearly every request a console gets is an agent's status post, metrics post or config
poll. Through FastAPI each one costs more Python than its whole database work (route
matching, dependency solving, request objects). This ASGI middleware answers those
requests directly when everything about them is ordinary: the signature checks out against
a cached key, the body is JSON that the route's pydantic model accepts, the query holds
plain values. It runs the same jobs (console/agentjobs.py) as the FastAPI routes in
console/api_agent.py and renders refusals the same way (console/rendering.py).

Anything unusual (a bad or missing signature header, a key not cached yet, a body that
does not parse or validate, an odd content type or query) is handed on untouched, body
included, to the FastAPI route, which stays the one reference for every error answer. The
nonce is recorded only by the job, so a request handed on is checked there as if new.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DataError, IntegrityError
from starlette.datastructures import URL
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from console import agentjobs, rendering, values
from console.agent_schemas import MetricsReport, RegisterRequest, StatusReport
from console.auth import Agent, signed_headers, signed_message, verified
from console.errors import ConsoleError
from console.state import ConsoleState

PREFIX = "/api/v1/agent/"
MAX_WAIT = 60
MAX_VERSION = 2**62
JSON_TYPES = ("application/json",)

Handler = Callable[["Call"], Awaitable[Response]]


@dataclass
class Call:
    """One agent request on the fast path."""

    state: ConsoleState
    agent: Agent
    scope: Scope
    receive: Receive
    headers: dict[str, str]
    body: bytes
    parsed: Any


class AgentFastPath:
    """Wraps the whole FastAPI app (outside its middleware: none of it is needed here)."""

    def __init__(self, app: ASGIApp, state: ConsoleState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            route = ROUTES.get((scope["method"], scope["path"]))
        if route is None:
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            # The last of repeated headers counts, as on the FastAPI route.
            headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        body = await _read_body(receive, headers)
        if body is None:
            return  # the client went away before sending its request
        call = self._admissible(scope, receive, headers, body, route)
        if call is None:
            await self.app(scope, _replay(receive, body), send)
            return
        try:
            response = await route.handler(call)
        except ConsoleError as exc:
            response = rendering.console_error(exc)
        except IntegrityError:
            response = rendering.integrity_error()
        except DataError:
            response = rendering.data_error()
        await response(scope, receive, send)

    def _admissible(
        self, scope: Scope, receive: Receive, headers: dict[str, str], body: bytes, route: Route
    ) -> Call | None:
        state = self.state
        try:
            signed = signed_headers(headers)
            query = scope["query_string"].decode()
        except (ConsoleError, UnicodeDecodeError):
            return None
        key = state.keys.get(signed.key_id)
        if key is None:
            return None
        raw_path = scope.get("raw_path") or scope["path"].encode()
        agent = verified(
            key, signed, signed_message(signed, scope["method"], raw_path, query, body)
        )
        if agent is None:
            return None
        parsed = route.parse(scope, headers, body)
        if parsed is None:
            return None
        return Call(state, agent, scope, receive, headers, body, parsed)


@dataclass(frozen=True)
class Route:
    handler: Handler
    # Validates the body (POST) or the query (GET); None: hand the request on.
    parse: Callable[[Scope, dict[str, str], bytes], Any]


async def _read_body(receive: Receive, headers: dict[str, str]) -> bytes | None:
    if "content-length" not in headers and "transfer-encoding" not in headers:
        return b""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(receive: Receive, body: bytes) -> Receive:
    """`receive` for the FastAPI route: the body already read, then the real stream."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _json_body(model: type[BaseModel]) -> Callable[[Scope, dict[str, str], bytes], Any]:
    def parse(_scope: Scope, headers: dict[str, str], body: bytes) -> Any:
        content_type = headers.get("content-type")
        if not body or (content_type is not None and content_type not in JSON_TYPES):
            return None
        try:
            # JSON straight into the model (one pass, in pydantic-core). Whatever this does
            # not accept goes to the FastAPI route (json.loads, then the same model).
            return model.model_validate_json(body)
        except ValidationError:
            return None

    return parse


def _no_body(_scope: Scope, _headers: dict[str, str], body: bytes) -> Any:
    return True if not body else None


@dataclass(frozen=True)
class PollQuery:
    app: str
    ip: str
    version: int
    wait: int


def _poll_query(scope: Scope, _headers: dict[str, str], body: bytes) -> PollQuery | None:
    if body:
        return None
    try:
        pairs = parse_qsl(scope["query_string"].decode(), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        return None
    query = dict(pairs)
    if len(query) != len(pairs) or "app" not in query or "ip" not in query:
        return None
    app, ip = query["app"], query["ip"]
    version, wait = _small_int(query.get("version", "0")), _small_int(query.get("wait", "0"))
    if version is None or wait is None or version > MAX_VERSION or wait > MAX_WAIT:
        return None
    if len(app) > 63 or len(ip) > 64:
        return None
    try:
        values.app_name(app)
        values.node_ip(ip)
    except ValueError:
        return None
    return PollQuery(app, ip, version, wait)


def _small_int(text: str) -> int | None:
    return int(text) if text.isdigit() and text.isascii() and len(text) <= 19 else None


# --- handlers ------------------------------------------------------------------------------


async def _status(call: Call) -> Response:
    await call.state.agentdb.run(agentjobs.status(call.state, call.agent, call.parsed))
    return Response(status_code=204)


async def _metrics(call: Call) -> Response:
    await call.state.agentdb.run(agentjobs.metrics(call.state, call.agent, call.parsed))
    return Response(status_code=204)


async def _register(call: Call) -> Response:
    body: RegisterRequest = call.parsed
    work = agentjobs.register(call.state, call.agent, body, body.hostname)
    node_id, version = await call.state.agentdb.run(work)
    return _json({"node_id": node_id, "config_version": version})


async def _whoami(call: Call) -> Response:
    return _json(await call.state.agentdb.run(agentjobs.whoami(call.state, call.agent)))


async def _config(call: Call) -> Response:
    query: PollQuery = call.parsed
    console = console_address(call.scope)
    document = await poll(call.state, call.agent, query, console, call.receive)
    if document is None:
        return Response(status_code=304)
    return Response(content=document, media_type="application/json")


async def poll(
    state: ConsoleState,
    agent: Agent,
    query: PollQuery,
    console: str | None,
    receive: Receive,
) -> bytes | None:
    """The long-poll: the document as soon as the node's version differs from the one
    the agent holds, None after `wait` seconds without a change (or when the client went
    away: nobody reads the answer, and the slot is freed now, not after `wait`)."""
    notifier = state.notifier
    # A change published while the first read runs is seen by comparing this count after
    # subscribing (the node's id is only known from that read).
    published = notifier.published
    node_id, document = await state.agentdb.run(
        agentjobs.poll_start(state, agent, (query.app, query.ip), query.version, console)
    )
    if document is not None or query.wait == 0:
        return document
    loop = asyncio.get_running_loop()
    deadline = loop.time() + query.wait
    async with notifier.subscribe(node_id) as changed:
        if notifier.published != published:
            changed.set()
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining > 0 and not changed.is_set():
                    woken = asyncio.ensure_future(changed.wait())
                    done, _pending = await asyncio.wait(
                        (woken, gone), timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                    )
                    woken.cancel()
                    if gone in done:
                        return None
                changed.clear()
                document = await state.agentdb.run(
                    agentjobs.poll_again(state, node_id, query.version, console)
                )
                if document is not None or deadline - loop.time() <= 0:
                    return document
        finally:
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gone


async def _disconnected(receive: Receive) -> None:
    """Returns when the client closes the connection (the ASGI server says so through
    `receive`; the poll's request has no body left to read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def console_address(scope: Scope) -> str | None:
    """host:port the agent reached the console at (its Host header)."""
    url = URL(scope=scope)
    host = url.hostname
    if not host:
        return None
    port = url.port or (443 if url.scheme == "https" else 80)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _json(content: Any) -> Response:
    return Response(json.dumps(content, separators=(",", ":")).encode(), 200,
                    media_type="application/json")  # fmt: skip


ROUTES: dict[tuple[str, str], Route] = {
    ("POST", PREFIX + "status"): Route(_status, _json_body(StatusReport)),
    ("POST", PREFIX + "metrics"): Route(_metrics, _json_body(MetricsReport)),
    ("POST", PREFIX + "register"): Route(_register, _json_body(RegisterRequest)),
    ("GET", PREFIX + "whoami"): Route(_whoami, _no_body),
    ("GET", PREFIX + "config"): Route(_config, _poll_query),
}
