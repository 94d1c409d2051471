"""`sofamesh console serve`: migrate, then run the API under uvicorn until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import sys

import uvicorn

from console.app import create_app
from console.db import make_engine, migrate, sessions
from console.errors import ConsoleError
from console.state import ConsoleState

DEFAULT_LISTEN = "127.0.0.1:8470"
# Long-polls hold requests for up to a minute; on stop they are cut after this long
# (agents retry) instead of holding the shutdown.
GRACEFUL_SECONDS = 3


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


def serve(url: str, listen: str) -> None:
    host, port = parse_listen(listen)
    engine = make_engine(url)
    migrate(engine)
    state = ConsoleState(engine=engine, sessions=sessions(engine))
    config = uvicorn.Config(
        create_app(state),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=True,
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
        server_header=False,
    )
    logging.getLogger("sofamesh.console").info(
        "console on http://%s:%d (%s)", host, port, engine.dialect.name
    )
    try:
        uvicorn.Server(config).run()
    finally:
        engine.dispose()
