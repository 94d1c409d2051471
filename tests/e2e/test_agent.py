"""The node agent end to end (issue 5): install with the seed options, the console's
switches, parameters and limits reaching the node, supervision, outages, uninstall."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import APP_PORT, Mesh, get, wait_for

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
