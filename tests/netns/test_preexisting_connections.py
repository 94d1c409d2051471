"""Connections open before interception starts keep working after it (a node gets
sofamesh while its apps are busy; the agent's own link to the console is one of them).

Where no netfilter rule existed, the namespace ran no conntrack: the first packet of an
old connection seen after apply is picked up mid-stream as a "new" connection. Only SYN
packets may be redirected, or that packet would go to the sidecar, which would reset it.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from netlab import Lab
from netlab.nsclient import InNetns

APPS = str(Path(__file__).with_name("sidecar_apps.py"))
ECHO_PORT = 9000
pytestmark = pytest.mark.netns


@pytest.fixture(params=["iptables", "nftables"])
def lab(request: pytest.FixtureRequest) -> Iterator[tuple[Lab, str]]:
    with Lab(["node", "peer"], ipv6=False) as lab:
        yield lab, str(request.param)


def exchange(sock: socket.socket, text: bytes) -> bytes:
    sock.sendall(text)
    return sock.recv(100)


def test_connections_open_before_apply_keep_working(lab: tuple[Lab, str], tmp_path: Path) -> None:
    the_lab, backend = lab
    node, peer = the_lab["node"], the_lab["peer"]
    for vm in (node, peer):
        echo = vm.spawn([sys.executable, "-P", APPS, "tcp-echo", "--port", str(ECHO_PORT)])
        vm.wait_for_port(ECHO_PORT, host=None, process=echo)
    for port in (15001, 15006):  # something listens where the rules redirect (no blackhole)
        proxy = node.spawn(node.probe_argv(["listen", "--port", str(port), "--name", "proxy"]))
        node.wait_for_port(port, process=proxy)
    in_node, in_peer = InNetns(node.netns_path), InNetns(peer.netns_path)
    try:
        outbound = in_node(socket.create_connection, (peer.ipv4, ECHO_PORT), 5)
        inbound = in_peer(socket.create_connection, (node.ipv4, ECHO_PORT), 5)
        assert in_node(exchange, outbound, b"before-out") == b"before-out"
        assert in_peer(exchange, inbound, b"before-in") == b"before-in"
        config = tmp_path / "hijack.json"
        config.write_text(json.dumps({"proxy": {"user": 1337}}))
        argv = [
            sys.executable,
            "-m",
            "agent",
            "--root",
            str(tmp_path),
            "hijack",
            "apply",
            "--backend",
            backend,
            "--config",
            str(config),
        ]
        node.run(argv, timeout=120)
        # Both old connections still reach their echo servers, in both directions.
        assert in_node(exchange, outbound, b"after-out") == b"after-out"
        assert in_peer(exchange, inbound, b"after-in") == b"after-in"
        # New connections are intercepted: they land on the stand-in proxy.
        fresh = in_node(socket.create_connection, (peer.ipv4, ECHO_PORT), 5)
        assert b"proxy" in in_node(fresh.recv, 200)
        for sock in (outbound, inbound, fresh):
            sock.close()
    finally:
        in_node.close()
        in_peer.close()
