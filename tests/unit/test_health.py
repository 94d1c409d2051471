"""Sidecar health: a real TCP listener and a real admin endpoint, and the rise/fall
debounce (R-AG-4)."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest

from agent.health import Health, HealthSpec, probe

pytestmark = pytest.mark.unit


class Ready(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(Ready.status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def sidecar() -> Iterator[HealthSpec]:
    listener = socket.create_server(("127.0.0.1", 0))
    admin = http.server.HTTPServer(("127.0.0.1", 0), Ready)
    thread = threading.Thread(target=admin.serve_forever, daemon=True)
    thread.start()
    Ready.status = 200
    yield HealthSpec(port=listener.getsockname()[1], admin_port=admin.server_address[1], timeout=1)
    admin.shutdown()
    admin.server_close()
    listener.close()
    thread.join(timeout=5)


def test_a_listening_and_ready_sidecar_is_healthy(sidecar: HealthSpec) -> None:
    assert probe(sidecar) == (True, "ready")


def test_draining_admin_is_not_healthy(sidecar: HealthSpec) -> None:
    Ready.status = 503
    assert probe(sidecar) == (False, "admin /ready answered 503")


def test_a_closed_listener_is_not_healthy(sidecar: HealthSpec) -> None:
    spare = socket.create_server(("127.0.0.1", 0))
    port = spare.getsockname()[1]
    spare.close()  # nothing listens there now
    ok, why = probe(HealthSpec(port=port, admin_port=sidecar.admin_port, timeout=1))
    assert not ok
    assert why.startswith(f"tcp 127.0.0.1:{port}:")


def test_rise_and_fall_debounce_the_verdict() -> None:
    answers = iter([True, False, False, True, False, False, False])
    health = Health(HealthSpec(rise=1, fall=3), check=lambda spec: (next(answers), "x"))
    assert health.observe() is True  # rise 1
    assert health.observe() is True  # one failure
    assert health.observe() is True  # two
    assert health.observe() is True  # a pass resets the count
    assert [health.observe() for _ in range(3)] == [True, True, False]  # three in a row
