"""agent/console_client.py against a real console, and its retry policy against a fake
transport (the one place a fake fits: making the network fail on cue)."""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime

import httpx
import pytest

from agent.console_client import (
    Backoff,
    ConsoleAuthError,
    ConsoleClient,
    ConsoleRejected,
    ConsoleUnreachable,
    Credentials,
    NodeGauges,
    PortCounters,
    SidecarStatus,
    sign_headers,
)
from console import security
from hijack.config import HijackConfig
from tests.console.conftest import World, free_port
from tests.console.test_api_apps import WEB

pytestmark = pytest.mark.unit


@pytest.fixture
def client(operator: httpx.Client, world: World) -> ConsoleClient:
    assert operator.post("/api/v1/apps", json=WEB).status_code == 201
    return ConsoleClient(world.url, Credentials(world.key_id, world.secret))


def test_register_config_status_metrics(
    client: ConsoleClient, operator: httpx.Client, world: World
) -> None:
    with client:
        scope = client.whoami()
        assert (scope.tenant, scope.workspace, scope.instance_id) == (
            world.tenant,
            world.workspace,
            world.instance,
        )
        registration = client.register("web", "10.0.0.1", "vm-1")
        config = client.config("web", "10.0.0.1")
        assert config is not None
        assert config.version == registration.config_version
        assert config.hijack_enabled is False
        assert config.limits == {8080: 0, 8081: 0}
        HijackConfig.parse(config.hijack)
        assert client.config("web", "10.0.0.1", version=config.version, wait=1) is None

        status = SidecarStatus(
            sidecar_status="Running",
            healthy=True,
            version="0.1.0",
            backend="iptables",
            created_at=datetime(2026, 1, 1, tzinfo=UTC),
            rule_digest="abc",
        )
        client.post_status("web", "10.0.0.1", "vm-1", status)
        client.post_metrics(
            "web",
            "10.0.0.1",
            NodeGauges(cpu_percent=5.0, mem_percent=10.0, load1=0.1),
            [PortCounters("inbound", 8080, requests=60, errors=6, rt_ms_sum=600.0, bytes_in=5)],
        )
    sidecar = operator.get("/api/v1/sidecars").json()[0]
    assert (sidecar["sidecar_status"], sidecar["backend"]) == ("Running", "iptables")
    web = operator.get("/api/v1/monitoring/realtime", params={"minutes": 1}).json()["apps"][0]
    assert (web["requests_per_min"], web["rt_ms"], web["error_rate"]) == (60.0, 10.0, 0.1)


def test_long_poll_wakes_on_switch(
    client: ConsoleClient, operator: httpx.Client, world: World
) -> None:
    first = client.config("web", "10.0.0.2")
    assert first is not None
    flipped: list[float] = []

    def flip() -> None:
        world.backend.server.wait_for_long_polls()
        flipped.append(time.monotonic())
        operator.put("/api/v1/apps/web/nodes/10.0.0.2/hijack", json={"enabled": True})

    thread = threading.Thread(target=flip)
    thread.start()
    changed = client.config("web", "10.0.0.2", version=first.version, wait=20)
    answered = time.monotonic()
    thread.join()
    assert changed is not None
    assert changed.hijack_enabled is True
    assert answered - flipped[0] < 1.0
    client.close()


def test_rejections_name_the_field(client: ConsoleClient) -> None:
    with pytest.raises(ConsoleRejected) as info:
        client.register("web", "10.0.0.9", "vm-1")
    assert info.value.status == 404
    assert info.value.fields == ["body.ip"]
    with pytest.raises(ConsoleRejected) as info:
        client.register("web", "10.0.0.1", "bad host")
    assert info.value.status == 422
    assert "body.hostname" in info.value.fields
    client.close()


def test_wrong_secret_is_an_auth_error_without_the_secret(world: World) -> None:
    bad = ConsoleClient(world.url, Credentials(world.key_id, "wrong-secret-value"))
    with bad, pytest.raises(ConsoleAuthError) as info:
        bad.register("web", "10.0.0.1", "vm-1")
    assert "wrong-secret-value" not in str(info.value)
    assert "wrong-secret-value" not in repr(Credentials(world.key_id, "wrong-secret-value"))


def test_unreachable_console_retries_with_backoff() -> None:
    slept: list[float] = []
    port = free_port()  # nothing listens there
    client = ConsoleClient(
        f"http://127.0.0.1:{port}",
        Credentials("SMAK" + "0" * 20, "s"),
        backoff=Backoff(attempts=4, base=0.5, cap=1.5),
        sleep=slept.append,
        rng=random.Random(7),
    )
    with client, pytest.raises(ConsoleUnreachable):
        client.register("web", "10.0.0.1", "vm-1")
    assert len(slept) == 3
    assert all(0 <= d <= cap for d, cap in zip(slept, (0.5, 1.0, 1.5), strict=True))


def test_retries_5xx_with_fresh_signatures() -> None:
    nonces: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        nonces.append(request.headers["X-Sofamesh-Nonce"])
        if len(nonces) < 3:
            return httpx.Response(503)
        return httpx.Response(200, json={"node_id": 1, "config_version": 2})

    client = ConsoleClient(
        "http://console.test",
        Credentials("SMAK" + "1" * 20, "s"),
        sleep=lambda _: None,
        transport=httpx.MockTransport(handler),
    )
    assert client.register("web", "10.0.0.1", "vm-1").config_version == 2
    assert len(set(nonces)) == 3
    client.close()


def test_client_and_console_sign_the_same_way() -> None:
    credentials = Credentials("SMAK" + "2" * 20, "top-secret")
    body = b'{"a":1}'
    headers = sign_headers(
        credentials, method="POST", path="/api/v1/agent/x", query="b=2&a=1", body=body, now=1e9
    )
    message = security.string_to_sign(
        method="POST",
        path="/api/v1/agent/x",
        raw_query="a=1&b=2",
        body=body,
        timestamp=headers["X-Sofamesh-Timestamp"],
        nonce=headers["X-Sofamesh-Nonce"],
    )
    assert security.signature("top-secret", message) == headers["X-Sofamesh-Signature"]
    parsed = security.SignedHeaders.parse({k.lower(): v for k, v in headers.items()})
    assert parsed.key_id == credentials.key_id
    assert not parsed.is_fresh()
