"""Anything that is not HTTP is a byte pipe with byte counters (R-SC-2): Redis works through
the sidecar, bytes arrive exactly as sent, and a failed upstream connect is a reset."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from tests.netns.sidecar_apps import BANNER
from tests.netns.sidecar_env import (
    BANNER_PORT,
    CLOSED_PORT,
    REDIS_PORT,
    TCP_ECHO_PORT,
    SidecarLab,
    sidecar_lab,
)

pytestmark = pytest.mark.netns

PING = b"*1\r\n$4\r\nPING\r\n"  # RESP: not a method token and a space, so not HTTP
PONG = b"+PONG\r\n"


@pytest.fixture(scope="module")
def env() -> Iterator[SidecarLab]:
    with sidecar_lab({}, redis=True) as the_env:
        yield the_env


def redis_cli(env: SidecarLab, *args: str) -> str:
    argv = ["redis-cli", "-h", env.node.ipv4, "-p", str(REDIS_PORT), *args]
    return env.client.run(argv, timeout=20).stdout.strip()


def test_redis_set_and_get_work_through_the_sidecar(env: SidecarLab) -> None:
    before = env.sidecar.counters("inbound", REDIS_PORT)
    assert redis_cli(env, "SET", "sofamesh", "through the sidecar") == "OK"
    assert redis_cli(env, "GET", "sofamesh") == "through the sidecar"
    delta = env.sidecar.delta_after(
        "inbound", REDIS_PORT, before, {"protocol_connections.tcp": 2, "bytes_sent": 1}
    )
    assert delta["protocol_connections.tcp"] == 2
    assert delta.get("protocol_connections.http", 0) == 0
    assert delta.get("requests_total", 0) == 0  # a byte pipe has no requests
    assert delta["bytes_received"] > 0 and delta["bytes_sent"] > 0


def test_tcp_byte_counters_equal_what_the_client_exchanged(env: SidecarLab) -> None:
    before = env.sidecar.counters("inbound", REDIS_PORT)
    result, answer = env.raw(
        env.client, env.node.ipv4, REDIS_PORT, PING, "--read-bytes", str(len(PONG))
    )
    assert (result["outcome"], answer) == ("complete", PONG)
    delta = env.sidecar.delta_after(
        "inbound", REDIS_PORT, before, {"bytes_received": len(PING), "bytes_sent": len(PONG)}
    )
    assert (delta["bytes_received"], delta["bytes_sent"]) == (len(PING), len(PONG))
    assert delta["connections_total"] == 1


def test_megabytes_of_binary_data_cross_the_pipe_unchanged(env: SidecarLab) -> None:
    data = random.Random(7).randbytes(8 * 1024 * 1024)
    before = env.sidecar.counters("inbound", TCP_ECHO_PORT)
    result, echoed = env.raw(
        env.client, env.node.ipv4, TCP_ECHO_PORT, data, "--read-bytes", str(len(data))
    )
    assert result["outcome"] == "complete"
    assert echoed == data
    delta = env.sidecar.delta_after(
        "inbound", TCP_ECHO_PORT, before, {"bytes_received": len(data), "bytes_sent": len(data)}
    )
    assert (delta["bytes_received"], delta["bytes_sent"]) == (len(data), len(data))
    assert delta["protocol_connections.tcp"] == 1


def test_a_server_that_speaks_first_is_heard_before_the_client_sends(env: SidecarLab) -> None:
    """Nothing to sniff yet: the sidecar must still connect upstream and pass the banner on."""
    before = env.sidecar.counters("inbound", BANNER_PORT)
    result, answer = env.raw(
        env.client, env.node.ipv4, BANNER_PORT, b"", "--read-bytes", str(len(BANNER))
    )
    assert (result["outcome"], answer) == ("complete", BANNER)
    delta = env.sidecar.delta_after("inbound", BANNER_PORT, before, {"bytes_sent": len(BANNER)})
    assert (delta["bytes_sent"], delta["connections_total"]) == (len(BANNER), 1)


def test_a_tcp_pipe_to_a_port_without_app_is_closed_without_data(env: SidecarLab) -> None:
    before = env.sidecar.counters("inbound", CLOSED_PORT)
    result, answer = env.raw(env.client, env.node.ipv4, CLOSED_PORT, b"\x16\x03\x01 not http")
    assert answer == b""
    assert result["outcome"] == "reset", result  # accepted, then closed with SO_LINGER 0
    delta = env.sidecar.delta_after("inbound", CLOSED_PORT, before, {"errors.upstream_connect": 1})
    assert (delta["errors.upstream_connect"], delta["protocol_connections.tcp"]) == (1, 1)
