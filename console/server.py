"""`sofamesh console serve`: migrate, then run the API under uvicorn until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.supervisors import Multiprocess

from console.app import asgi_app
from console.db import make_engine, migrate, sessions
from console.errors import ConsoleError
from console.state import ConsoleState

DEFAULT_LISTEN = "127.0.0.1:8470"
# Long-polls hold requests for up to a minute; on stop they are cut after this long
# (agents retry) instead of holding the shutdown.
GRACEFUL_SECONDS = 3
AGENT_PREFIX = "/api/v1/agent/"
WORKERS_ENV = "SOFAMESH_CONSOLE_WORKERS"
WORKER_DB_ENV = "SOFAMESH_CONSOLE_WORKER_DB"
MAX_WORKERS = 64


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT or [V6]:PORT."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ConsoleError(f"--listen: expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class QuietAgentAccess(logging.Filter):
    """Drops the access lines of agents' requests that went well. Each node makes one every
    few seconds: thousands of nodes would bury everything else (and the formatting costs a
    share of the console's CPU). Their refusals and errors are still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn's access record: (client, method, path, http version, status)
        if isinstance(args, tuple) and len(args) == 5:
            path, status = args[2], args[4]
            if isinstance(path, str) and path.startswith(AGENT_PREFIX):
                return not (isinstance(status, int) and (status < 300 or status == 304))
        return True


def workers_from_env() -> int:
    """Worker processes (env SOFAMESH_CONSOLE_WORKERS, default 1)."""
    raw = os.environ.get(WORKERS_ENV, "1")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_WORKERS:
        raise ConsoleError(f"{WORKERS_ENV}: expected 1..{MAX_WORKERS}, got {raw!r}")
    return int(raw)


def serve(url: str, listen: str, workers: int | None = None) -> None:
    """Serve until stopped. With several workers (PostgreSQL only: they share its nonces,
    sessions and LISTEN/NOTIFY like replicas do), uvicorn forks that many processes on one
    listening socket; each runs `worker_app`."""
    host, port = parse_listen(listen)
    workers = workers_from_env() if workers is None else workers
    logging.getLogger("uvicorn.access").addFilter(QuietAgentAccess())
    engine = make_engine(url)
    if workers > 1 and engine.dialect.name != "postgresql":
        engine.dispose()
        raise ConsoleError(
            f"{WORKERS_ENV}={workers}: several worker processes need PostgreSQL "
            "(SQLite is for one process)"
        )
    migrate(engine)
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": "httptools",
        "log_config": None,
        "access_log": True,
        "timeout_graceful_shutdown": GRACEFUL_SECONDS,
        "server_header": False,
    }
    log = logging.getLogger("sofamesh.console")
    log.info("console on http://%s:%d (%s, %d process(es))", host, port, engine.dialect.name,
             workers)  # fmt: skip
    if workers > 1:
        engine.dispose()
        # The workers are spawned: they learn the database from the environment.
        os.environ[WORKER_DB_ENV] = url
        config = uvicorn.Config(
            "console.server:worker_app", factory=True, workers=workers, **common
        )
        Multiprocess(config, sockets=[config.bind_socket()]).run()
        return
    state = ConsoleState(engine=engine, sessions=sessions(engine))
    try:
        uvicorn.Server(uvicorn.Config(asgi_app(state), **common)).run()
    finally:
        engine.dispose()


def worker_app() -> ASGIApp:
    """The app of one worker process (see `serve`)."""
    configure_logging()
    logging.getLogger("uvicorn.access").addFilter(QuietAgentAccess())
    engine = make_engine(os.environ[WORKER_DB_ENV])
    return asgi_app(ConsoleState(engine=engine, sessions=sessions(engine)))
