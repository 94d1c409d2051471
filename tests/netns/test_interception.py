"""Interception behaviour in namespace VMs, the same tests for every backend
(R-HJ-1..4, R-HJ-6, R-HJ-8, R-HJ-9, R-SF-1, R-SF-2)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from tests.netns.mesh import INBOUND, OUTBOUND, PROXY_UID, Mesh, landed

pytestmark = pytest.mark.netns


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("port", [80, 8080])
def test_inbound_to_80_and_above_1024_lands_on_the_inbound_listener(
    mesh: Mesh, family: int, port: int
) -> None:
    mesh.apply()
    node_ip = mesh.node.ipv4 if family == 4 else mesh.node.ipv6
    assert node_ip is not None
    got = mesh.peer.probe_connect(node_ip, port)
    assert landed(got) == "inbound"
    assert got["listener_port"] == INBOUND
    shown = f"[{node_ip}]:{port}" if family == 6 else f"{node_ip}:{port}"
    assert got["orig_dst"] == shown  # SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST recovered it


@pytest.mark.parametrize("family", [4, 6])
def test_ssh_443_and_an_excluded_port_are_not_intercepted_inbound(mesh: Mesh, family: int) -> None:
    mesh.apply({"inbound": {"exclude_ports": [9090]}})
    node_ip = mesh.node.ipv4 if family == 4 else mesh.node.ipv6
    assert node_ip is not None
    for port in (22, 443, 9090):
        got = mesh.peer.probe_connect(node_ip, port)
        assert landed(got) == f"node:{port}", f"port {port}"
        assert got["listener_port"] == port
    assert landed(mesh.peer.probe_connect(node_ip, 8081)) == "inbound"


@pytest.mark.parametrize("family", [4, 6])
def test_outbound_lands_on_the_outbound_listener_with_the_original_destination(
    mesh: Mesh, family: int
) -> None:
    mesh.apply()
    peer_ip = mesh.peer.ipv4 if family == 4 else mesh.peer.ipv6
    assert peer_ip is not None
    for port in (80, 8080):
        got = mesh.node.probe_connect(peer_ip, port)
        assert landed(got) == "outbound"
        assert got["listener_port"] == OUTBOUND
        assert got["orig_dst"] == (f"[{peer_ip}]:{port}" if family == 6 else f"{peer_ip}:{port}")


def test_excluded_cidrs_and_ports_go_direct_outbound(mesh: Mesh) -> None:
    assert mesh.other.ipv6 is not None
    mesh.apply(
        {
            "outbound": {
                "exclude_cidrs": [f"{mesh.other.ipv4}/32", f"{mesh.other.ipv6}/128"],
                "exclude_ports": [3306],
            }
        }
    )
    assert landed(mesh.node.probe_connect(mesh.other.ipv4, 8080)) == "other:8080"
    assert landed(mesh.node.probe_connect(mesh.other.ipv6, 8080)) == "other:8080"
    assert landed(mesh.node.probe_connect(mesh.peer.ipv4, 3306)) == "peer:3306"
    # Not excluded: still intercepted, so the blacklist matched only what it lists.
    assert landed(mesh.node.probe_connect(mesh.peer.ipv4, 5432)) == "outbound"


def test_the_proxy_users_connections_go_direct(mesh: Mesh) -> None:
    mesh.apply()
    assert landed(mesh.node.probe_connect(mesh.peer.ipv4, 8080, user=PROXY_UID)) == "peer:8080"
    assert landed(mesh.node.probe_connect(mesh.peer.ipv4, 8080)) == "outbound"


def test_loopback_destinations_and_low_ports_go_direct(mesh: Mesh) -> None:
    mesh.apply()
    assert landed(mesh.node.probe_connect("127.0.0.1", 8080)) == "node:8080"
    assert landed(mesh.node.probe_connect("::1", 8080)) == "node:8080"
    # Outbound to a port in 1..1024 other than 80 is never intercepted (R-HJ-2).
    mesh.listen(mesh.peer, 443)
    assert landed(mesh.node.probe_connect(mesh.peer.ipv4, 443)) == "peer:443"


def test_the_proxy_ports_are_never_intercepted(mesh: Mesh) -> None:
    mesh.apply()
    got = mesh.peer.probe_connect(mesh.node.ipv4, OUTBOUND)
    assert landed(got) == "outbound"
    # Reached directly: conntrack's original destination is the address the peer dialled.
    assert got["orig_dst"] in (None, f"{mesh.node.ipv4}:{OUTBOUND}")
    got = mesh.peer.probe_connect(mesh.node.ipv4, INBOUND)
    assert got["orig_dst"] in (None, f"{mesh.node.ipv4}:{INBOUND}")


def test_app_to_app_on_the_same_node_through_its_own_ip_does_not_loop(mesh: Mesh) -> None:
    """R-HJ-4: app A -> node IP:8080 -> outbound sidecar -> inbound sidecar -> app B,
    counted once on each side; the inbound sidecar reaches the app from 127.0.0.6."""
    for key in (("node", INBOUND), ("node", OUTBOUND)):
        mesh.node.stop(mesh.listeners.pop(key))
    out_fwd = mesh.forward(mesh.node, OUTBOUND, "fwd-out")
    in_fwd = mesh.forward(mesh.node, INBOUND, "fwd-in", source="127.0.0.6")
    mesh.apply()
    got = mesh.node.probe_connect(mesh.node.ipv4, 8080)
    assert landed(got) == "node:8080"
    assert got["peer"].startswith("127.0.0.6:")
    out_log, _ = mesh.node.stop(out_fwd)
    in_log, _ = mesh.node.stop(in_fwd)
    out_lines = [json.loads(line) for line in out_log.splitlines() if line.strip()]
    in_lines = [json.loads(line) for line in in_log.splitlines() if line.strip()]
    assert [r["orig_dst"] for r in out_lines] == [f"{mesh.node.ipv4}:8080"]
    assert [r["orig_dst"] for r in in_lines] == [f"{mesh.node.ipv4}:8080"]


def test_unrelated_rules_survive_install_and_uninstall_and_the_dump_is_restored(mesh: Mesh) -> None:
    node = mesh.node
    node.run(
        [
            "iptables-legacy",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "udp",
            "--dport",
            "5353",
            "-j",
            "RETURN",
        ]
    )
    node.run(["iptables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", "9999", "-j", "ACCEPT"])
    node.run(
        [
            "ip6tables-legacy",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "udp",
            "--dport",
            "53",
            "-j",
            "RETURN",
        ]
    )
    node.run(["ipset", "create", "unrelated", "hash:ip"])
    node.run(
        [
            "nft",
            "add table inet unrelated; "
            "add chain inet unrelated c { type filter hook input priority 10; }; "
            "add rule inet unrelated c tcp dport 7777 counter accept",
        ]
    )
    before = mesh.dump()
    mesh.apply({"outbound": {"exclude_cidrs": ["10.0.0.0/8"]}})
    during = mesh.dump()
    assert during != before
    for unrelated in (
        "--dport 5353 -j RETURN",
        "--dport 9999 -j ACCEPT",
        "--dport 53 -j RETURN",
        "create unrelated hash:ip",
        "tcp dport 7777 counter",
    ):
        assert unrelated in during
    mesh.sofamesh("hijack", "remove")
    assert mesh.dump() == before


def test_applying_twice_equals_applying_once(mesh: Mesh) -> None:
    doc = {"inbound": {"exclude_ports": [9090]}, "outbound": {"exclude_cidrs": ["10.0.0.0/8"]}}
    first = mesh.apply(doc)
    once = mesh.dump()
    second = mesh.apply(doc)
    assert "already applied, nothing changed" in second.stdout
    assert mesh.dump() == once
    digest = first.stdout.split("digest ")[1].split()[0]
    assert mesh.status()["digest"] == digest


def test_a_changed_config_replaces_the_old_rules(mesh: Mesh) -> None:
    mesh.apply({"inbound": {"exclude_ports": [9090]}})
    assert landed(mesh.peer.probe_connect(mesh.node.ipv4, 9090)) == "node:9090"
    mesh.apply({"inbound": {"exclude_ports": [8080]}})
    assert landed(mesh.peer.probe_connect(mesh.node.ipv4, 9090)) == "inbound"
    assert landed(mesh.peer.probe_connect(mesh.node.ipv4, 8080)) == "node:8080"
    replaced = mesh.dump()
    mesh.sofamesh("hijack", "remove")
    mesh.apply({"inbound": {"exclude_ports": [8080]}})
    assert mesh.dump() == replaced  # no residue of the first config


def test_connections_during_repeated_replacement_are_always_intercepted(mesh: Mesh) -> None:
    """No window without rules while one config replaces another (R-HJ-6)."""
    mesh.apply({"inbound": {"exclude_ports": [9090]}})
    results: list[str] = []
    stop = threading.Event()

    def connect_loop() -> None:
        while not stop.is_set() and len(results) < 2000:
            results.append(landed(mesh.peer.probe_connect(mesh.node.ipv4, 8081, timeout=3)))

    thread = threading.Thread(target=connect_loop)
    thread.start()
    try:
        for i in range(6):
            mesh.apply({"inbound": {"exclude_ports": [9090 if i % 2 else 9091]}})
    finally:
        stop.set()
        thread.join(timeout=60)
    assert results, "the connect loop made no connection"
    assert set(results) == {"inbound"}


BAD_CONFIGS = [
    ({"inbound": {"exclude_ports": [80]}}, "inbound.exclude_ports[0]"),
    ({"inbound": {"exclude_ports": [1024]}}, "inbound.exclude_ports[0]"),
    ({"outbound": {"exclude_ports": [70000]}}, "outbound.exclude_ports[0]"),
    ({"outbound": {"exclude_cidrs": ["10.0.0.0/33"]}}, "outbound.exclude_cidrs[0]"),
    ({"garbage": True}, "garbage"),
]


@pytest.mark.parametrize("installed_first", [False, True], ids=["empty", "installed"])
def test_bad_configs_are_rejected_naming_the_field_and_change_nothing(
    mesh: Mesh, installed_first: bool
) -> None:
    if installed_first:
        mesh.apply({"inbound": {"exclude_ports": [9090]}})
    before = mesh.dump()
    for doc, field in BAD_CONFIGS:
        result = mesh.apply(doc, check=False)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == result.stderr.strip().splitlines()[0], "one line"
        assert f"error: {field}: " in result.stderr
        assert mesh.dump() == before


def test_status_shows_counters_digest_and_repairs_drift(mesh: Mesh) -> None:
    mesh.apply()
    for _ in range(3):
        assert landed(mesh.peer.probe_connect(mesh.node.ipv4, 8080)) == "inbound"
    status = mesh.status()
    assert status["in_sync"] is True
    hits: dict[str, int] = {}
    for rule in status["rules"]:  # iptables has one copy per family: add them up
        tag = rule["comment"].split(":")[1]
        hits[tag] = hits.get(tag, 0) + rule["packets"]
    assert hits["in-intercept"] >= 3  # one NEW packet per connection reaches nat
    assert hits["in-redirect"] >= 3

    # Someone deletes our redirect rule by hand: status names the drift, repair restores.
    if mesh.backend == "nftables":
        mesh.node.run(["nft", "flush", "chain", "inet", "sofamesh", "in_redirect"])
    elif mesh.backend == "ebpf":  # its redirect "rule" is the sidecar socket in a SOCKMAP
        pin = next(o["pin"] for o in status["bpf"] if o["pin"].endswith("map_inbound_sockets"))
        mesh.node.run(["bpftool", "map", "delete", "pinned", pin, "key", "0", "0", "0", "0"])
    else:
        mesh.node.run(["iptables-legacy", "-t", "nat", "-F", "SOFAMESH_IN_REDIRECT"])
    drifted = mesh.sofamesh("hijack", "status", "--check", check=False)
    assert drifted.returncode == 8
    assert "missing rule sofamesh:in-redirect" in drifted.stdout
    assert "repaired drift" in mesh.sofamesh("hijack", "repair").stdout
    assert mesh.status()["in_sync"] is True
    assert landed(mesh.peer.probe_connect(mesh.node.ipv4, 8080)) == "inbound"


def test_the_other_netfilter_variant_is_never_mixed_in(mesh: Mesh) -> None:
    mesh.apply()
    other = "iptables" if mesh.backend == "nftables" else "nftables"
    path = mesh.config_file({})
    result = mesh.sofamesh(
        "hijack", "apply", "--backend", other, "--config", str(path), check=False
    )
    assert result.returncode == 7
    assert "refusing to install" in result.stderr
    assert landed(mesh.peer.probe_connect(mesh.node.ipv4, 8080)) == "inbound"


def test_remove_restores_direct_traffic(mesh: Mesh) -> None:
    mesh.apply()
    assert landed(mesh.peer.probe_connect(mesh.node.ipv4, 8080)) == "inbound"
    mesh.sofamesh("hijack", "remove")
    assert landed(mesh.peer.probe_connect(mesh.node.ipv4, 8080)) == "node:8080"
    assert landed(mesh.node.probe_connect(mesh.peer.ipv4, 8080)) == "peer:8080"
    assert "nothing to remove" in mesh.sofamesh("hijack", "remove").stdout


def _without_empty_tables(dump: str) -> str:
    """Drop iptables tables that hold no rule and no user chain: an empty legacy table with
    ACCEPT policies is what the kernel has once anything reads it, and behaves as none."""
    out, table = [], []
    for line in filter(None, dump.splitlines()):
        if line.startswith("*"):
            table = [line]
        elif table:
            table.append(line)
            if line == "COMMIT":
                body = table[1:-1]
                if any(not (b.startswith(":") and " ACCEPT " in b) for b in body if b.strip()):
                    out += table
                table = []
        else:
            out.append(line)
    return "\n".join(out)


def test_uninstall_on_a_fresh_node_leaves_no_rules_sets_or_chains(mesh: Mesh) -> None:
    before = _without_empty_tables(mesh.dump())
    mesh.apply({"outbound": {"exclude_cidrs": ["10.0.0.0/8"], "exclude_ports": [3306]}})
    assert _without_empty_tables(mesh.dump()) != before
    mesh.sofamesh("hijack", "remove")
    after = mesh.dump()
    assert _without_empty_tables(after) == before
    assert "sofamesh" not in after.lower()


def test_ipv6_off_is_said_out_loud_and_leaves_ipv6_direct(mesh: Mesh) -> None:
    """R-HJ-9: IPv6 is intercepted with the same rules, or explicitly not at all."""
    assert mesh.node.ipv6 is not None
    result = mesh.apply({"ipv6": False})
    assert "IPv6 traffic is NOT intercepted" in result.stdout
    assert landed(mesh.peer.probe_connect(mesh.node.ipv6, 8080)) == "node:8080"
    assert landed(mesh.node.probe_connect(mesh.peer.ipv6, 8080)) == "peer:8080"
    assert landed(mesh.peer.probe_connect(mesh.node.ipv4, 8080)) == "inbound"


def test_apply_refuses_when_nothing_listens_on_a_redirect_port(mesh: Mesh) -> None:
    """Rules that redirect to a closed port would blackhole traffic (hard rule: never)."""
    mesh.node.stop(mesh.listeners.pop(("node", INBOUND)))
    before = mesh.dump()
    result = mesh.apply(check=False)
    assert result.returncode == 9
    assert f"nothing listens on {INBOUND} (inbound)" in result.stderr
    assert mesh.dump() == before
    assert landed(mesh.peer.probe_connect(mesh.node.ipv4, 8080)) == "node:8080"


ECHO_APP = """
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8082)); s.listen()
def echo(c):
    while (d := c.recv(100)):
        c.sendall(d)
while True:
    c, _ = s.accept(); threading.Thread(target=echo, args=(c,), daemon=True).start()
"""

CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], 8082)); s.settimeout(5)
for line in sys.stdin:
    s.sendall(b"ping"); print(s.recv(10).decode(), flush=True)
"""


def test_remove_park_keeps_redirected_connections_until_the_final_remove(mesh: Mesh) -> None:
    """The safe uninstall order: park (new connections go direct, redirected ones keep
    their NAT), let the sidecar drain, then remove; without park the kernel stops
    translating and resets them."""
    node = mesh.node
    node.stop(mesh.listeners.pop(("node", INBOUND)))
    app = node.spawn([sys.executable, "-c", ECHO_APP])
    node.wait_for_port(8082, host=None, process=app)
    mesh.forward(node, INBOUND, "fwd-in", source="127.0.0.6")
    mesh.apply()
    client = mesh.peer.spawn([sys.executable, "-c", CLIENT, node.ipv4], stdin=subprocess.PIPE)
    assert client.stdin is not None and client.stdout is not None

    def ping() -> str:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write("x\n")
        client.stdin.flush()
        return client.stdout.readline().strip()

    assert ping() == "ping"  # through the forwarder (the stand-in sidecar)
    mesh.sofamesh("hijack", "remove", "--park")
    assert ping() == "ping"  # the redirected connection still works
    assert landed(mesh.peer.probe_connect(node.ipv4, 8080)) == "node:8080"  # new: direct
    assert ping() == "ping"
    mesh.sofamesh("hijack", "remove")
    assert "sofamesh" not in mesh.dump().lower()
    mesh.peer.stop(client)
