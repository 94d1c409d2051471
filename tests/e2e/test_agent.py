"""The node agent end to end (issue 5): install with the seed options, the console's
switches, parameters and limits reaching the node, supervision, outages, uninstall."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from netlab import VM
from tests.e2e.conftest import APP_PORT, APPS, Mesh, Node, elapsed, get, load, wait_for

pytestmark = pytest.mark.e2e


def test_install_two_nodes_traffic_through_both_sidecars(fresh: Mesh) -> None:
    server, client = fresh.nodes["server"], fresh.nodes["client"]
    for node in (server, client):
        done = node.install()
        assert "installed: app web" in done.stdout, done.stdout + done.stderr
    answered = [get(client.vm, server.vm.ipv4) for _ in range(5)]
    assert all(a.get("statuses") == [200] for a in answered), answered
    assert client.requests_seen("outbound") >= 5
    assert server.requests_seen("inbound") >= 5
    # The unmeshed VM's calls are intercepted on the server's side only.
    plain = fresh.lab["plain"]
    assert get(plain, server.vm.ipv4).get("statuses") == [200]
    # The console: both sidecars Running and healthy, the requests in the app's traffic
    # (the agents post every 10 s).
    for node in (server, client):
        seen = fresh.sidecar_row(node)
        assert (seen["sidecar_status"], seen["healthy"]) == ("Running", True), seen
        assert seen["backend"] in ("iptables", "nftables", "ebpf"), seen
        assert seen["rule_digest"], seen
    wait_for(
        "the console's traffic series to count the requests",
        lambda: fresh.console_requests() >= 6 or None,
        deadline=30,
    )


def rules_installed(node: Node) -> bool:
    """What the kernel holds, read with `sofamesh hijack status` inside the VM."""
    doc = json.loads(node.sofamesh("hijack", "status", "--json").stdout)
    return bool(doc["installed"])


def test_switch_off_and_on_from_the_console(installed: Mesh) -> None:
    server, client = installed.nodes["server"], installed.nodes["client"]
    with load(client.vm, server.vm.ipv4) as result:
        wait_for("load through the server's sidecar", lambda: server.requests_seen("inbound") > 5)
        started = time.monotonic()
        installed.switch(server, False)
        server.wait_status(
            "rules removed and sidecar stopped",
            lambda d: not d["rules"]["installed"] and d["sidecar"]["status"] == "Terminated",
            deadline=5,
        )
        off_s = elapsed(started)
        assert not rules_installed(server)
        wait_for(
            "the console to show the server's sidecar Terminated",
            lambda: installed.sidecar_row(server)["sidecar_status"] == "Terminated",
            deadline=5,
        )
        before = result_snapshot(client)
        wait_for("direct traffic", lambda: result_snapshot(client) > before + 5)
        assert server.requests_seen("inbound") == 0  # no sidecar: the app is reached directly
        started = time.monotonic()
        installed.switch(server, True)
        server.wait_status("intercepting again", lambda d: d["converged"] and d["enabled"], 5)
        on_s = elapsed(started)
        assert rules_installed(server)
        wait_for("traffic through the new sidecar", lambda: server.requests_seen("inbound") > 5)
    print(f"switch off took {off_s:.2f}s, on {on_s:.2f}s; load: {result}")
    assert result.failed == 0, result.counts
    assert result.ok > 20, result.counts


def result_snapshot(client: Node) -> int:
    """Requests the client's sidecar has sent out so far (it stays in the path)."""
    return client.requests_seen("outbound")


def test_blacklist_and_governance_changes_from_the_console(installed: Mesh) -> None:
    server, client = installed.nodes["server"], installed.nodes["client"]
    sidecar_pid = server.status()["sidecar"]["pid"]
    version = server.status()["config"]["version"]
    # Inbound blacklist: the app port bypasses the server's sidecar.
    installed.set_params(inbound_exclude_ports=[str(APP_PORT)])
    server.wait_status(
        "the new rules", lambda d: d["config"]["version"] != version and d["converged"], 5
    )
    before = server.requests_seen("inbound")
    assert get(client.vm, server.vm.ipv4).get("statuses") == [200]
    assert server.requests_seen("inbound") == before  # went direct, past the sidecar
    installed.set_params()
    server.wait_status("the rules without the blacklist", lambda d: d["converged"], 5)
    assert get(client.vm, server.vm.ipv4).get("statuses") == [200]
    assert server.requests_seen("inbound") == before + 1
    # Governance: at most 2 requests in flight on the app port; the third gets 503.
    version = server.status()["config"]["version"]
    installed.set_limit(APP_PORT, 2)
    server.wait_status(
        "the sidecar reloaded with the limit",
        lambda d: d["config"]["version"] != version and d["converged"],
        5,
    )
    plain = installed.lab["plain"]
    try:
        holders = [
            plain.spawn(
                [sys.executable, "-P", APPS, "requests", server.vm.ipv4, str(APP_PORT), "/hold"]
            )
            for _ in range(2)
        ]
        wait_for("two requests held in flight", lambda: in_flight(server) == 2)
        assert status_code(plain, f"http://{server.vm.ipv4}:{APP_PORT}/fast") == 503
    finally:
        # On the server's loopback: never intercepted, so never limited.
        status_code(server.vm, f"http://127.0.0.1:{APP_PORT}/_release")
    for proc in holders:
        out, _ = proc.communicate(timeout=30)
        assert json.loads(out)["statuses"] == [200]
    assert server.status()["sidecar"]["pid"] == sidecar_pid  # reloaded, never restarted
    installed.set_limit(APP_PORT, 0)


def status_code(vm: VM, url: str) -> int:
    done = vm.run(["curl", "-s", "-o", "/dev/null", "-m", "10", "-w", "%{http_code}", url])
    return int(done.stdout)


def in_flight(node: Node) -> int:
    stats = node.sidecar_stats()
    return sum(
        int(p["active_requests"])
        for p in stats["ports"]
        if p["direction"] == "inbound" and p["port"] == APP_PORT
    )


def test_sidecar_killed_under_load_is_restarted(installed: Mesh) -> None:
    server, client = installed.nodes["server"], installed.nodes["client"]
    old = server.status()["sidecar"]["pid"]
    with load(client.vm, server.vm.ipv4) as result:
        wait_for("load through the sidecar", lambda: server.requests_seen("inbound") > 5)
        os.kill(old, signal.SIGKILL)
        server.wait_status(
            "a new sidecar, healthy, rules back",
            lambda d: d["converged"] and d["sidecar"]["pid"] not in (None, old),
            deadline=15,
        )
        wait_for("load through the new sidecar", lambda: server.requests_seen("inbound") > 5)
    # Reported, not asserted to be zero: connections in flight through the killed process
    # die with it (that is what kill -9 means); new ones go direct until it is back.
    print(f"sidecar kill -9 under load: {result.failed} of {result.ok + result.failed} failed")
    assert result.ok > 20, result.counts
    assert server.status()["sidecar"]["restarts"] >= 1


def test_sidecar_that_cannot_stay_up_fails_open(installed: Mesh) -> None:
    server, client = installed.nodes["server"], installed.nodes["client"]
    old = server.status()["sidecar"]["pid"]
    # Something else takes the sidecar's admin port the moment it dies: it cannot restart.
    squatter = server.vm.spawn(
        [sys.executable, "-c", SQUAT.format(pid=old, port=15000)],
        stdout=subprocess.PIPE,
    )
    assert squatter.stdout is not None
    assert squatter.stdout.readline().strip() == "ready"
    started = time.monotonic()
    os.kill(old, signal.SIGKILL)
    server.wait_status("rules removed (fail open)", lambda d: not d["rules"]["installed"], 15)
    open_s = elapsed(started)
    assert not rules_installed(server)
    assert get(client.vm, server.vm.ipv4).get("statuses") == [200]  # direct to the app
    server.wait_status("sidecar given up", lambda d: d["sidecar"]["state"] == "FATAL", 30)
    wait_for(
        "the console to show the sidecar down",
        lambda: installed.sidecar_row(server)["sidecar_status"] in ("Terminated", "Unknown"),
        deadline=10,
    )
    print(f"fail-open {open_s:.2f}s after the crash")
    server.vm.stop(squatter)


# Binds the port as soon as the process `pid` is gone, then holds it.
SQUAT = """
import os, socket, time
print("ready", flush=True)
while os.path.exists("/proc/{pid}"):
    time.sleep(0.001)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
while True:
    try:
        s.bind(("127.0.0.1", {port}))
        break
    except OSError:
        time.sleep(0.001)
s.listen()
time.sleep(3600)
"""


def test_agent_killed_sidecar_and_rules_keep_working_then_adopted(installed: Mesh) -> None:
    server, client = installed.nodes["server"], installed.nodes["client"]
    before = server.status()
    os.kill(before["agent_pid"], signal.SIGKILL)
    # Without its agent the node still intercepts.
    seen = server.requests_seen("inbound")
    assert get(client.vm, server.vm.ipv4).get("statuses") == [200]
    assert server.requests_seen("inbound") == seen + 1
    after = server.wait_status(
        "a new agent that adopted the sidecar",
        lambda d: d["agent_pid"] != before["agent_pid"] and d["converged"],
        deadline=20,
    )
    assert after["sidecar"]["pid"] == before["sidecar"]["pid"]
    assert after["rules"]["digest"] == before["rules"]["digest"]
    assert after["sidecar"]["restarts"] == 0
    assert get(client.vm, server.vm.ipv4).get("statuses") == [200]
    assert server.requests_seen("inbound") == seen + 2


def test_console_outage_node_keeps_state_and_catches_up(installed: Mesh) -> None:
    server, client = installed.nodes["server"], installed.nodes["client"]
    before = server.status()
    installed.stop_console()
    server.wait_status("the console seen as away", lambda d: not d["console"]["reachable"], 40)
    # The node keeps intercepting with its cached config.
    seen = server.requests_seen("inbound")
    assert get(client.vm, server.vm.ipv4).get("statuses") == [200]
    assert server.requests_seen("inbound") == seen + 1
    assert server.status()["rules"]["digest"] == before["rules"]["digest"]
    installed.start_console_process_only()
    installed.switch(server, False)
    server.wait_status(
        "the switch made after the console came back",
        lambda d: d["console"]["reachable"] and d["enabled"] is False and d["converged"],
        deadline=40,
    )
