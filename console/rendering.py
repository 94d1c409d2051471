"""The error answers of the API, shared by the FastAPI handlers (console/app.py) and the
agents' fast path (console/agentfast.py), so both answer alike."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from console.errors import ConsoleError


def console_error(exc: ConsoleError) -> JSONResponse:
    if exc.loc is None:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)
    detail = [{"loc": list(exc.loc), "msg": exc.message, "type": type(exc).__name__}]
    return JSONResponse({"detail": detail}, status_code=exc.status)


def integrity_error() -> JSONResponse:
    return JSONResponse(
        {"detail": "a concurrent change conflicted with this one; nothing was written: retry"},
        status_code=409,
    )


def data_error() -> JSONResponse:
    return JSONResponse(
        {"detail": "a value cannot be stored (e.g. it contains NUL); nothing was written"},
        status_code=422,
    )
