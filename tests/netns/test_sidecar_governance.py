"""Governance "max requests" per app port (R-SC-3): at most N in flight, a clear 503 for the
rest on a connection that stays usable, changed by reload or SIGHUP without dropping
connections, 0 = unlimited, 2147483647 at most. Run with one worker and with two: the limit
is per port, not per worker process.

The app on HOLD_PORT holds each /hold request until the test releases it, and counts how
many it has in flight: that count, not timing, shows what the sidecar let through.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest

from netlab import wait_until
from tests.netns.sidecar_env import HOLD_PORT, SidecarLab, sidecar_lab

pytestmark = pytest.mark.netns

N = 5


def limited(n: int, workers: int) -> dict[str, Any]:
    return {"workers": workers, "limits": {str(HOLD_PORT): n}}


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def env(request: pytest.FixtureRequest) -> Iterator[SidecarLab]:
    with sidecar_lab(limited(N, int(request.param))) as the_env:
        yield the_env


@pytest.fixture
def limit(env: SidecarLab) -> Iterator[int]:
    """Each test starts at limit N with an idle hold app, and leaves nothing held."""
    workers = int(env.sidecar.doc["workers"])
    status, _ = env.sidecar.reload(limited(N, workers))
    assert status == 200
    env.hold_app(env.node, "/_reset")
    env.hold_app(env.peer, "/_reset")
    yield N
    env.hold_app(env.node, "/_release")
    env.hold_app(env.peer, "/_release")


def rejection(n: int, port: int = HOLD_PORT) -> str:
    return f"sofamesh: max requests ({n}) reached for port {port}\n"


def wait_held(env: SidecarLab, n: int, vm_name: str = "node") -> None:
    vm = env.lab[vm_name]
    wait_until(
        lambda: env.hold_app(vm, "/_stats")["in_flight"] >= n,
        deadline=20.0,
        interval=0.05,
        what=f"{n} requests held by the app on {vm_name}",
    )


def test_at_most_n_requests_reach_the_app_and_the_rest_get_503(env: SidecarLab, limit: int) -> None:
    before = env.sidecar.counters("inbound", HOLD_PORT)
    burst = env.burst(env.client, env.node.ipv4, HOLD_PORT, "/hold", 2 * limit)
    wait_held(env, limit)
    rejected = burst.wait_answers(limit)
    for answer in rejected:
        assert answer["status"] == 503, answer
        assert answer["headers"]["x-sofamesh-limit"] == str(limit)
        assert answer["body"] == rejection(limit)
    assert env.hold_app(env.node, "/_stats")["max_in_flight"] == limit
    env.hold_app(env.node, "/_release")
    answers = burst.finish()
    assert sorted(a["status"] for a in answers) == [200] * limit + [503] * limit
    app = env.hold_app(env.node, "/_stats")
    assert (app["held"], app["max_in_flight"]) == (limit, limit)
    delta = env.sidecar.delta_after(
        "inbound", HOLD_PORT, before, {"responses.2xx": limit, "limit_rejections": limit}
    )
    assert (delta["limit_rejections"], delta["responses.5xx"]) == (limit, limit)


def test_outbound_requests_are_limited_by_the_destination_port(env: SidecarLab, limit: int) -> None:
    burst = env.burst(env.node, env.peer.ipv4, HOLD_PORT, "/hold", limit + 1)
    wait_held(env, limit, "peer")
    [over] = burst.wait_answers(1)
    assert (over["status"], over["body"]) == (503, rejection(limit))
    env.hold_app(env.peer, "/_release")
    assert sorted(a["status"] for a in burst.finish()) == [200] * limit + [503]


def test_a_connection_that_got_503_stays_usable(env: SidecarLab, limit: int) -> None:
    burst = env.burst(env.client, env.node.ipv4, HOLD_PORT, "/hold", limit)
    wait_held(env, limit)
    session = env.session(env.client, env.node.ipv4, HOLD_PORT)
    first = session.request("GET /fast")
    assert (first["status"], first["body"]) == (503, rejection(limit))
    env.hold_app(env.node, "/_release")
    burst.finish()
    second = session.request("GET /fast")
    assert (second["status"], second["body"]) == (200, "fast\n")
    assert second["local_port"] == first["local_port"]
    session.close()


@pytest.mark.parametrize("how", ["POST /reload", "SIGHUP"])
def test_a_new_limit_applies_to_an_open_keep_alive_connection(
    env: SidecarLab, limit: int, how: str
) -> None:
    workers = int(env.sidecar.doc["workers"])
    burst = env.burst(env.client, env.node.ipv4, HOLD_PORT, "/hold", limit)
    wait_held(env, limit)
    session = env.session(env.client, env.node.ipv4, HOLD_PORT)
    before = session.request("GET /fast")
    assert before["status"] == 503
    connections = env.sidecar.counters("inbound", HOLD_PORT)["connections_total"]
    old_digest = env.sidecar.digest()

    if how == "SIGHUP":
        env.sidecar.write_config(limited(limit + 1, workers))
        env.sidecar.signal(signal.SIGHUP)
        wait_until(
            lambda: env.sidecar.digest() != old_digest,
            deadline=10.0,
            interval=0.05,
            what="the config digest changes after SIGHUP",
        )
    else:
        status, doc = env.sidecar.reload(limited(limit + 1, workers))
        assert status == 200, doc
        assert doc["digest"] != old_digest

    after = session.request("GET /fast")
    assert (after["status"], after["body"]) == (200, "fast\n")
    assert after["local_port"] == before["local_port"]  # the same connection
    assert env.sidecar.counters("inbound", HOLD_PORT)["connections_total"] == connections
    env.hold_app(env.node, "/_release")
    burst.finish()
    session.close()


def test_limit_zero_means_unlimited(env: SidecarLab, limit: int) -> None:
    workers = int(env.sidecar.doc["workers"])
    status, _ = env.sidecar.reload(limited(0, workers))
    assert status == 200
    many = 4 * limit
    burst = env.burst(env.client, env.node.ipv4, HOLD_PORT, "/hold", many)
    wait_held(env, many)
    env.hold_app(env.node, "/_release")
    assert [a["status"] for a in burst.finish()] == [200] * many


def test_the_largest_limit_is_accepted(env: SidecarLab, limit: int) -> None:
    workers = int(env.sidecar.doc["workers"])
    status, doc = env.sidecar.reload(limited(2147483647, workers))
    assert status == 200, doc
    _, shown = env.sidecar.admin_json("GET", "/config")
    assert shown["config"]["limits"] == {str(HOLD_PORT): 2147483647}
    assert env.curl(env.client, env.url(HOLD_PORT, "/fast")).stdout == "fast\n"


def test_a_limit_above_the_maximum_is_refused_and_the_old_config_stays(
    env: SidecarLab, limit: int
) -> None:
    workers = int(env.sidecar.doc["workers"])
    digest = env.sidecar.digest()
    status, doc = env.sidecar.reload(limited(2147483648, workers))
    assert status == 400
    assert doc["error"].startswith(f"limits.{HOLD_PORT}"), doc
    assert env.sidecar.digest() == digest
    # ... and the old limit is still the one enforced.
    burst = env.burst(env.client, env.node.ipv4, HOLD_PORT, "/hold", limit + 1)
    wait_held(env, limit)
    [over] = burst.wait_answers(1)
    assert (over["status"], over["body"]) == (503, rejection(limit))
    env.hold_app(env.node, "/_release")
    burst.finish()
