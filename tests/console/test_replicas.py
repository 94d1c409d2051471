"""Two console replicas on one PostgreSQL: a switch flipped through replica 1 wakes an agent
long-polling replica 2 within a second (LISTEN/NOTIFY), and they share nonces."""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from console.db import make_engine, migrate
from tests.console.agent_http import signed
from tests.console.conftest import (
    Backend,
    ConsoleProcess,
    PgCluster,
    login,
    make_world,
)
from tests.console.test_api_apps import WEB

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def replicas(
    pg_cluster: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Backend, Backend]]:
    url = pg_cluster.create_database("console_replicas")
    base: Path = tmp_path_factory.mktemp("replicas")
    engine = make_engine(url)
    migrate(engine)
    one = ConsoleProcess(url, base / "one.log").start()
    two = ConsoleProcess(url, base / "two.log").start()
    try:
        yield Backend("postgresql", one, engine), Backend("postgresql", two, engine)
    finally:
        one.stop()
        two.stop()
        engine.dispose()


def test_switch_through_one_wakes_poll_on_two(replicas: tuple[Backend, Backend]) -> None:
    first, second = replicas
    world = make_world(first)
    with contextlib.closing(login(world)) as operator:
        assert operator.post("/api/v1/apps", json=WEB).status_code == 201
        query = {"app": "web", "ip": "10.0.0.1"}
        two = second.server.url
        current = signed(
            two, world.key_id, world.secret, "GET", "/api/v1/agent/config", query=query
        )
        version = current.json()["version"]
        result: dict[str, httpx.Response] = {}

        def poll() -> None:
            result["answer"] = signed(two, world.key_id, world.secret, "GET",
                                      "/api/v1/agent/config",
                                      query={**query, "version": version, "wait": 20})  # fmt: skip

        thread = threading.Thread(target=poll)
        thread.start()
        second.server.wait_for_long_polls()
        started = time.monotonic()
        flipped = operator.put("/api/v1/apps/web/nodes/10.0.0.1/hijack", json={"enabled": True})
        assert flipped.status_code == 200
        thread.join(15)
        elapsed = time.monotonic() - started
    assert result["answer"].status_code == 200
    assert result["answer"].json()["hijack_enabled"] is True
    assert elapsed < 1.0, f"replica 2 answered after {elapsed:.2f}s"


def test_replicas_share_nonces(replicas: tuple[Backend, Backend]) -> None:
    first, second = replicas
    world = make_world(first)
    nonce = secrets.token_hex(16)
    ts = int(time.time())
    body = {"app": "web", "ip": "10.0.0.1", "hostname": "h"}
    one = signed(first.server.url, world.key_id, world.secret, "POST", "/api/v1/agent/register",
                 body=body, nonce=nonce, timestamp=ts)  # fmt: skip
    assert one.status_code == 404  # authenticated; no such app in this fresh instance
    two = signed(second.server.url, world.key_id, world.secret, "POST", "/api/v1/agent/register",
                 body=body, nonce=nonce, timestamp=ts)  # fmt: skip
    assert two.status_code == 401
    assert two.json()["detail"] == "replayed nonce"
