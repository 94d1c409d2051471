"""The pages (R-CO-8): login, apps, one app, sidecars, sidecar and real-time monitoring, keys.

Each page reads through the JSON API's own handlers (same scope, same queries, same
answers), so what a page shows is what the API answers.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy import select

from console import api_apps, api_monitor, api_params, api_session, api_traffic, auth, values
from console.errors import NotFound, Unauthorized
from console.models import App
from console.state import DbDep, now, unix_now
from console.web import charts, fmt
from console.web.routing import PageRoute, ViewerDep, render, serve_static

router = APIRouter(route_class=PageRoute, include_in_schema=False)

DEFAULT_MINUTES = 5
WINDOWS = (5, 15, 30, 60, 360, 1440)  # the window picker's choices, in minutes
STATUS_CSS = {"Running": "ok", "Waiting": "warn", "Terminated": "bad", "Unknown": "unknown"}
REFRESH_SECONDS = 10  # monitoring pages re-read themselves this often


# A path on this console: visible ASCII only (browsers drop tabs and new lines from URLs,
# so "/\t/host" would become "//host"), and not "//host" or "/\\host".
LOCAL_PATH_RE = re.compile(r"/(?![/\\])[!-~]*")


def _local_target(target: str | None) -> str:
    """Where to go after login: only a path on this console (no open redirect)."""
    return target if target and LOCAL_PATH_RE.fullmatch(target) else "/apps"


def _minutes(raw: str | None) -> int:
    """The window in minutes; anything but a whole number in 1..1440 means the default."""
    if raw is None or not re.fullmatch(r"[0-9]{1,4}", raw) or not 1 <= int(raw) <= 1440:
        return DEFAULT_MINUTES
    return int(raw)


def _app_name(name: str) -> str:
    if not values.APP_NAME_RE.fullmatch(name):
        raise NotFound(f"no app {name!r}: app names are letters, digits and '-'")
    return name


@router.get("/")
def home() -> Response:
    return RedirectResponse("/apps", status_code=303)


@router.get("/static/{name}")
def static(name: Annotated[str, Path(max_length=64)], request: Request) -> Response:
    return serve_static(name, request)


@router.get("/login")
def login_page(
    request: Request,
    db: DbDep,
    target: Annotated[str | None, Query(alias="next", max_length=2048)] = None,
) -> Response:
    goto = _local_target(target)
    try:
        auth.operator(request, db)
    except Unauthorized:
        return render(request, "login.html", {"next": goto})
    return RedirectResponse(goto, status_code=303)


@router.get("/apps")
def apps_page(request: Request, who: ViewerDep, db: DbDep) -> Response:
    scope = who.need_scope()
    apps = api_apps.list_apps(scope, db)
    return render(request, "apps.html", {"apps": apps}, viewer=who)


@router.get("/apps/{name}")
def app_page(
    name: Annotated[str, Path(max_length=64)], request: Request, who: ViewerDep, db: DbDep
) -> Response:
    scope = who.need_scope()
    name = _app_name(name)
    app = api_apps.get_app(name, scope, db)
    traffic = api_traffic.app_monitoring(name, scope, db, DEFAULT_MINUTES)
    end = unix_now()
    start = end - DEFAULT_MINUTES * 60
    requests_chart = charts.line_chart(
        "chart-traffic",
        f"Requests and errors per {traffic.resolution} s",
        {
            "requests": [(p.t, p.requests) for p in traffic.series],
            "errors": [(p.t, p.errors) for p in traffic.series],
        },
        start,
        end,
        css={"requests": "s0", "errors": "bad"},
        integer=True,
    )
    rt_chart = charts.line_chart(
        "chart-rt",
        "Mean response time",
        {"RT": [(p.t, p.rt_ms) for p in traffic.series if p.requests]},
        start,
        end,
        css={"RT": "s1"},
        unit=" ms",
    )
    context = {
        "app": app,
        "params": api_params.get_params(name, scope, db),
        "governance": api_params.get_governance(name, scope, db),
        "changes": api_params.governance_changes(name, scope, db),
        "env": api_params.environment(request, scope, db, name),
        "traffic": traffic,
        "requests_chart": requests_chart,
        "rt_chart": rt_chart,
        "minutes": DEFAULT_MINUTES,
    }
    return render(request, "app.html", context, viewer=who)


@router.get("/sidecars")
def sidecars_page(
    request: Request,
    who: ViewerDep,
    db: DbDep,
    app: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    scope = who.need_scope()
    names = db.execute(
        select(App.name).where(App.instance_id == scope.instance_id).order_by(App.name)
    ).scalars()
    chosen = _app_name(app) if app else None
    context = {
        "sidecars": api_monitor.sidecars(scope, db, chosen),
        "app_names": list(names),
        "chosen": chosen,
        "status_css": STATUS_CSS,
        "refresh": REFRESH_SECONDS,
        "now_label": fmt.when(now()),
    }
    return render(request, "sidecars.html", context, viewer=who)


@router.get("/monitoring/sidecars")
def sidecar_monitoring_page(
    request: Request,
    who: ViewerDep,
    db: DbDep,
    minutes: Annotated[str | None, Query(max_length=8)] = None,
) -> Response:
    scope = who.need_scope()
    window = _minutes(minutes)
    data = api_monitor.sidecar_monitoring(scope, db, window)
    end = unix_now()
    start = end - window * 60
    statuses = {status: [(p.t, getattr(p, status)) for p in data.series] for status in STATUS_CSS}
    context = {
        "minutes": window,
        "windows": WINDOWS,
        "refresh": REFRESH_SECONDS,
        "latest": data.series[-1] if data.series else None,
        "versions": data.versions,
        "status_css": STATUS_CSS,
        "status_chart": charts.line_chart(
            "chart-status",
            "Sidecars per status",
            statuses,
            start,
            end,
            css=STATUS_CSS,
            integer=True,
        ),
        "healthy_chart": charts.line_chart(
            "chart-healthy",
            "Healthy sidecars",
            {"healthy": [(p.t, p.healthy) for p in data.series]},
            start,
            end,
            css={"healthy": "ok"},
            integer=True,
        ),
        "versions_chart": charts.bar_chart(
            "chart-versions",
            "Sidecars per version",
            [(v.version, v.count) for v in data.versions],
            fmt.number,
        ),
    }
    return render(request, "sidecar_monitoring.html", context, viewer=who)


@router.get("/monitoring/realtime")
def realtime_page(
    request: Request,
    who: ViewerDep,
    db: DbDep,
    minutes: Annotated[str | None, Query(max_length=8)] = None,
) -> Response:
    scope = who.need_scope()
    window = _minutes(minutes)
    data = api_monitor.realtime(scope, db, window)
    context = {
        "minutes": window,
        "windows": WINDOWS,
        "refresh": REFRESH_SECONDS,
        "apps": data.apps,
        "top_charts": [
            charts.bar_chart(
                "chart-top-requests",
                "Top 5 by requests per minute",
                [(a.app, a.requests_per_min) for a in data.top_requests],
                fmt.number,
            ),
            charts.bar_chart(
                "chart-top-rt",
                "Top 5 by response time",
                [(a.app, a.rt_ms) for a in data.top_rt],
                lambda v: f"{fmt.number(v)} ms",
            ),
            charts.bar_chart(
                "chart-top-errors",
                "Top 5 by error rate",
                [(a.app, a.error_rate) for a in data.top_error_rate],
                fmt.percent,
            ),
        ],
    }
    return render(request, "realtime.html", context, viewer=who)


@router.get("/keys")
def keys_page(request: Request, who: ViewerDep, db: DbDep) -> Response:
    keys = api_session.list_keys(who.op, db)
    return render(request, "keys.html", {"keys": keys}, viewer=who)
