"""Life cycle (R-SC-5, R-AG-2): SIGTERM drains (in-flight requests finish with
`Connection: close`, the process exits 0), a second SIGTERM closes at once, and a hot
restart hands the listeners and counters to a new process; under steady wrk load neither a
drain nor a hot restart costs a client a single error."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator

import pytest

from netlab import wait_until
from tests.netns.sidecar_env import (
    APP_PORT,
    HOLD_PORT,
    SidecarLab,
    require,
    sidecar_lab,
)
from tests.netns.sidecar_wire import WrkResult, parse_wrk

pytestmark = pytest.mark.netns

DRAIN = 10.0
LOADED = 200  # requests through the sidecar before the test acts: the load is steady


@pytest.fixture(scope="module")
def lab() -> Iterator[SidecarLab]:
    with sidecar_lab({}, start=False) as the_env:
        yield the_env


@pytest.fixture
def env(lab: SidecarLab) -> Iterator[SidecarLab]:
    """A freshly started sidecar (drain timeout DRAIN) with the rules applied."""
    lab.sidecar.write_config({"timeouts": {"drain": DRAIN}})
    lab.sidecar.start()
    lab.apply_rules()
    lab.hold_app(lab.node, "/_reset")
    yield lab
    lab.hold_app(lab.node, "/_release")
    if lab.rules_applied:
        lab.remove_rules()
    lab.sidecar.stop_all()


def start_wrk(env: SidecarLab, seconds: int) -> subprocess.Popen[str]:
    require("wrk")
    argv = ["wrk", "-t1", "-c8", f"-d{seconds}s", env.url(APP_PORT, "/small.bin")]
    return env.client.spawn(argv)


def finish_wrk(proc: subprocess.Popen[str], seconds: int) -> WrkResult:
    out, err = proc.communicate(timeout=seconds + 30)
    assert proc.returncode == 0, err
    return parse_wrk(out)


def wait_for_load(env: SidecarLab) -> float:
    got = env.sidecar.wait_counters(
        "inbound",
        APP_PORT,
        lambda c: c.get("requests_total", 0) >= LOADED,
        f"wrk has sent {LOADED} requests through the sidecar",
    )
    return got["requests_total"]


def test_sigterm_drains_under_steady_load_without_a_client_error(env: SidecarLab) -> None:
    """New connections to the app port go direct (rules replaced in one transaction, so
    established intercepted flows keep their redirection), then the sidecar drains."""
    wrk = start_wrk(env, 6)
    wait_for_load(env)
    env.apply_rules(inbound={"exclude_ports": [APP_PORT]})
    assert wrk.poll() is None, "wrk ended before the drain began"
    env.sidecar.signal(signal.SIGTERM)
    assert env.sidecar.proc is not None
    assert env.sidecar.wait_exit(env.sidecar.proc, DRAIN + 5) == 0
    result = finish_wrk(wrk, 6)
    assert (result.socket_errors, result.non_2xx_3xx) == (0, 0), result.text
    assert result.requests > LOADED


def test_uninstall_order_rules_then_drain_costs_no_client_an_error(env: SidecarLab) -> None:
    """R-AG-2 as the agent does it, under load: `hijack remove --park` (new connections go
    direct, redirected ones keep their translation), SIGTERM the sidecar (it drains), then
    the final `hijack remove`."""
    wrk = start_wrk(env, 6)
    wait_for_load(env)
    env.remove_rules(park=True)
    assert wrk.poll() is None, "wrk ended before the drain began"
    env.sidecar.signal(signal.SIGTERM)
    assert env.sidecar.proc is not None
    assert env.sidecar.wait_exit(env.sidecar.proc, DRAIN + 5) == 0
    env.remove_rules()
    result = finish_wrk(wrk, 6)
    assert (result.socket_errors, result.non_2xx_3xx) == (0, 0), result.text


def test_sigterm_lets_an_in_flight_request_finish_with_connection_close(
    env: SidecarLab,
) -> None:
    burst = env.burst(env.client, env.node.ipv4, HOLD_PORT, "/hold", 1)
    wait_until(
        lambda: env.hold_app(env.node, "/_stats")["in_flight"] == 1,
        deadline=20.0,
        what="the request is held by the app",
    )
    env.sidecar.signal(signal.SIGTERM)
    wait_until(
        lambda: env.sidecar.admin("GET", "/ready")[0] == 503,
        deadline=10.0,
        interval=0.05,
        what="/ready answers 503 while draining",
    )
    assert env.sidecar.admin("GET", "/ready")[1].strip() == "draining"
    assert env.sidecar.stats()["draining"] is True
    env.hold_app(env.node, "/_release")
    [answer] = burst.finish()
    assert (answer["status"], answer["body"]) == (200, "released\n")
    assert answer["headers"]["connection"].lower() == "close"
    assert env.sidecar.proc is not None
    assert env.sidecar.wait_exit(env.sidecar.proc, DRAIN + 5) == 0


def test_a_second_sigterm_closes_at_once(env: SidecarLab) -> None:
    status, _ = env.sidecar.reload({"timeouts": {"drain": 600}})  # longer than this test waits
    assert status == 200
    burst = env.burst(env.client, env.node.ipv4, HOLD_PORT, "/hold", 1)
    wait_until(
        lambda: env.hold_app(env.node, "/_stats")["in_flight"] == 1,
        deadline=20.0,
        what="the request is held by the app",
    )
    env.sidecar.signal(signal.SIGTERM)
    wait_until(
        lambda: env.sidecar.admin("GET", "/ready")[0] == 503,
        deadline=10.0,
        interval=0.05,
        what="/ready answers 503 while draining",
    )
    env.sidecar.signal(signal.SIGTERM)
    assert env.sidecar.proc is not None
    env.sidecar.wait_exit(env.sidecar.proc, 15.0)
    [answer] = burst.finish()
    assert "error" in answer, answer  # its connection was closed under it


def test_hot_restart_under_steady_load_loses_no_request_and_keeps_the_counters(
    env: SidecarLab,
) -> None:
    old = env.sidecar.proc
    assert old is not None
    wrk = start_wrk(env, 8)
    wait_for_load(env)
    before = env.sidecar.counters("inbound", APP_PORT)["requests_total"]

    new = env.sidecar.spawn("--hot-restart")
    assert env.sidecar.wait_exit(old, DRAIN + 10) == 0
    env.sidecar.proc = new
    wait_until(
        lambda: env.sidecar.stats()["pid"] == new.pid,
        deadline=20.0,
        interval=0.1,
        what="the new sidecar answers on the admin port",
    )
    assert new.poll() is None
    taken_over = env.sidecar.counters("inbound", APP_PORT)["requests_total"]
    assert taken_over >= before  # counters continue from the old process's values
    assert wrk.poll() is None, "wrk ended before the new sidecar served it"

    result = finish_wrk(wrk, 8)
    assert (result.socket_errors, result.non_2xx_3xx) == (0, 0), result.text
    after = env.sidecar.counters("inbound", APP_PORT)["requests_total"]
    assert after > taken_over  # the new process served the rest of the load
