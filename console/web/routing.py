"""What every page shares: who is looking, rendering, security headers, the static files.

Pages are GET only and read through the same handlers as the JSON API. Every change is a
`fetch` from static/sofamesh.js to that API, with the session cookie and the CSRF token in
`X-CSRF-Token`, so the API's own checks (CSRF, validation, scope) guard the UI too.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, PackageLoader, select_autoescape

from console import api_session, auth
from console.errors import ConsoleError, NotFound, Unauthorized
from console.state import DbDep
from console.views import ScopeOut
from console.web import fmt

# No asset from elsewhere, no inline script or style: what a page runs is ours (R-CO-8).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
STATIC_FILES = {"sofamesh.css": "text/css", "sofamesh.js": "text/javascript"}


class LoginRequired(Exception):
    """No valid session: the page answers with a redirect to the login page."""


class NoScope(Exception):
    """The session has no instance selected (or none exists yet)."""


@dataclass(frozen=True)
class Viewer:
    """The operator looking at a page, the instance they act in and the ones they can pick."""

    op: auth.Operator
    scope: auth.Scope | None
    instances: list[ScopeOut]

    def need_scope(self) -> auth.Scope:
        if self.scope is None:
            raise NoScope
        return self.scope


def viewer(request: Request, db: DbDep) -> Viewer:
    try:
        op = auth.operator(request, db)
    except Unauthorized:
        raise LoginRequired from None
    scope = auth.scope_of(db, op.instance_id, op.username, op.user_id) if op.instance_id else None
    found = Viewer(op, scope, api_session.list_instances(op, db))
    # Error pages rendered by PageRoute show the header too.
    request.state.viewer = found
    return found


ViewerDep = Annotated[Viewer, Depends(viewer)]


@functools.cache
def templates() -> Jinja2Templates:
    env = Environment(
        loader=PackageLoader("console.web", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(fmt.FILTERS)
    return Jinja2Templates(env=env)


def render(
    request: Request,
    name: str,
    context: dict[str, Any] | None = None,
    *,
    viewer: Viewer | None = None,
    status_code: int = 200,
) -> Response:
    page = {"viewer": viewer, "path": request.url.path, **(context or {})}
    return templates().TemplateResponse(request, name, page, status_code=status_code)


class PageRoute(APIRoute):
    """Turns the page errors into pages (login redirect, no instance, not found) and adds
    the security headers; the API's routes keep their JSON errors."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                response = await handler(request)
            except LoginRequired:
                query = f"?{request.url.query}" if request.url.query else ""
                target = urlencode({"next": request.url.path + query})
                response = RedirectResponse(f"/login?{target}", status_code=303)
            except NoScope:
                response = _message(request, "no-scope", "", 200)
            except NotFound as exc:
                response = _message(request, "not-found", exc.message, 404)
            except ConsoleError as exc:
                response = _message(request, "error", exc.message, exc.status)
            except RequestValidationError:
                response = _message(request, "error", "this address is not valid", 422)
            response.headers.update(SECURITY_HEADERS)
            response.headers.setdefault("Cache-Control", "no-store")
            return response

        return page


def _message(request: Request, kind: str, text: str, status: int) -> Response:
    who = getattr(request.state, "viewer", None)
    return render(
        request, "message.html", {"kind": kind, "text": text}, viewer=who, status_code=status
    )


@functools.cache
def static_file(name: str) -> tuple[bytes, str]:
    body = resources.files("console.web").joinpath("static", name).read_bytes()
    return body, hashlib.sha256(body).hexdigest()[:16]


def serve_static(name: str, request: Request) -> Response:
    """The UI's own stylesheet and script (a fixed list: no path from the URL reaches
    the file system)."""
    if name not in STATIC_FILES:
        raise NotFound(f"no static file {name!r}")
    body, etag = static_file(name)
    headers = {"ETag": f'"{etag}"', "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == f'"{etag}"':
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=STATIC_FILES[name], headers=headers)
