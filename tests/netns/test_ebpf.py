"""What only the eBPF backend promises (R-HJ-5..8): map updates without reloads, pins that
outlive the agent, a clean uninstall, fail-open when the sidecar is gone, the app's view of
its peer. The behaviour every backend shares is in test_interception.py."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netlab import Cgroup, Lab, cgroup2_mount, wait_until
from tests.netns.conftest import _unmount
from tests.netns.ebpf_env import ebpf_skip_reason
from tests.netns.mesh import INBOUND, OUTBOUND, Mesh, landed

pytestmark = [pytest.mark.netns, pytest.mark.ebpf]


@pytest.fixture
def ebpf(tmp_path: Path) -> Iterator[Mesh]:
    if reason := ebpf_skip_reason():
        pytest.skip(reason)
    with Cgroup("node") as cgroup, Lab(["node", "peer"], ipv6=True) as lab:
        m = Mesh(lab, "ebpf", tmp_path, cgroup=cgroup)
        m.node.cgroup = str(cgroup.path)
        try:
            m.listen(m.node, INBOUND, "inbound")
            m.listen(m.node, OUTBOUND, "outbound")
            for port in (8080, 9090):
                m.listen(m.node, port)
                m.listen(m.peer, port)
            yield m
            m.sofamesh("hijack", "remove", check=False)
        finally:
            _unmount(m.bpffs)


def _objects(mesh: Mesh) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = mesh.status()["bpf"]
    return objects


def _ids(mesh: Mesh) -> dict[str, set[int]]:
    """Kernel ids of our programs, maps and links, from the pins `status` reports."""
    out: dict[str, set[int]] = {"prog": set(), "map": set(), "link": set()}
    for obj in _objects(mesh):
        out[obj["kind"]].add(int(obj["id"]))
    return out


def _kernel_ids(mesh: Mesh, kind: str) -> set[int]:
    listed = json.loads(mesh.node.run(["bpftool", "-j", kind, "show"]).stdout or "[]")
    return {int(item["id"]) for item in listed}


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


def test_a_blacklist_change_rewrites_maps_only_and_keeps_connections(ebpf: Mesh) -> None:
    node = ebpf.node
    node.stop(ebpf.listeners.pop(("node", INBOUND)))
    app = node.spawn([sys.executable, "-c", ECHO_APP])
    node.wait_for_port(8082, host=None, process=app)
    fwd = ebpf.forward(node, INBOUND, "fwd-in", source="127.0.0.6")
    ebpf.apply()
    before = _ids(ebpf)
    assert len(before["prog"]) == 7 and len(before["link"]) == 7
    client = ebpf.peer.spawn([sys.executable, "-c", CLIENT, node.ipv4], stdin=subprocess.PIPE)

    def ping() -> str:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write("x\n")
        client.stdin.flush()
        return client.stdout.readline().strip()

    assert ping() == "ping"  # through the forwarder (the stand-in sidecar)
    ebpf.apply(
        {"inbound": {"exclude_ports": [9090]}, "outbound": {"exclude_cidrs": ["10.0.0.0/16"]}}
    )
    assert _ids(ebpf) == before  # same programs, maps and links: nothing was reloaded
    assert ping() == "ping"  # the established connection did not notice
    assert landed(ebpf.peer.probe_connect(node.ipv4, 9090)) == "node:9090"  # now excluded
    ebpf.peer.stop(client)
    log, _ = node.stop(fwd)
    first = json.loads(log.splitlines()[0])
    assert first["orig_dst"] == f"{node.ipv4}:8082"


def test_interception_outlives_the_process_that_installed_it(ebpf: Mesh) -> None:
    """The agent is a process that exits; pinned links keep the programs attached."""
    ebpf.apply()  # a CLI process: it has exited when this returns
    ids = _ids(ebpf)
    assert ids["link"] <= _kernel_ids(ebpf, "link")
    assert landed(ebpf.peer.probe_connect(ebpf.node.ipv4, 8080)) == "inbound"
    assert landed(ebpf.node.probe_connect(ebpf.peer.ipv4, 8080)) == "outbound"
    # A restarted agent finds the same objects and has nothing to do.
    assert "already applied, nothing changed" in ebpf.apply().stdout
    assert _ids(ebpf) == ids


def test_uninstall_leaves_no_programs_links_pins_or_maps(ebpf: Mesh) -> None:
    before = ebpf.bpf_dump()
    ebpf.apply({"outbound": {"exclude_cidrs": ["10.0.0.0/8", "2001:db8:1::/48"]}})
    ids = _ids(ebpf)
    assert ebpf.bpf_dump() != before
    ebpf.sofamesh("hijack", "remove")

    def gone() -> bool:  # the kernel frees unpinned objects after an RCU grace period
        return all(not (ids[k] & _kernel_ids(ebpf, k)) for k in ("prog", "map", "link"))

    wait_until(gone, deadline=10.0, what="our programs, maps and links freed")
    assert ebpf.bpf_dump() == before
    assert not (ebpf.bpffs / "sofamesh").exists()
    assert landed(ebpf.peer.probe_connect(ebpf.node.ipv4, 8080)) == "node:8080"
    assert landed(ebpf.node.probe_connect(ebpf.peer.ipv4, 8080)) == "peer:8080"


def test_with_the_sidecar_gone_inbound_reaches_the_app_and_outbound_goes_direct(
    ebpf: Mesh,
) -> None:
    ebpf.apply()
    assert landed(ebpf.peer.probe_connect(ebpf.node.ipv4, 8080)) == "inbound"
    ebpf.node.stop(ebpf.listeners.pop(("node", INBOUND)))
    ebpf.node.stop(ebpf.listeners.pop(("node", OUTBOUND)))
    assert landed(ebpf.peer.probe_connect(ebpf.node.ipv4, 8080)) == "node:8080"
    assert landed(ebpf.node.probe_connect(ebpf.peer.ipv4, 8080)) == "peer:8080"
    status = ebpf.status()
    hits = {r["comment"].split(":")[1]: r["packets"] for r in status["rules"]}
    assert hits["in-fail-open"] >= 1 and hits["out-fail-open"] >= 1
    assert any("in-redirect" in line for line in status["drift"])  # said, not hidden
    # The sidecar is back: its sockets register themselves as they listen (sock_ops), so
    # interception resumes without the agent.
    ebpf.listen(ebpf.node, INBOUND, "inbound")
    ebpf.listen(ebpf.node, OUTBOUND, "outbound")
    assert landed(ebpf.peer.probe_connect(ebpf.node.ipv4, 8080)) == "inbound"
    assert landed(ebpf.node.probe_connect(ebpf.peer.ipv4, 8080)) == "outbound"
    assert ebpf.status()["in_sync"] is True
    assert "no drift" in ebpf.sofamesh("hijack", "repair").stdout


GETPEERNAME = """
import json, socket, sys
for host in sys.argv[1:]:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam) as s:
        s.connect((host, 8080))
        print(json.dumps(list(s.getpeername()[:2])))
"""


def test_the_app_sees_the_peer_it_dialled(ebpf: Mesh) -> None:
    ebpf.apply()
    peer6 = ebpf.peer.ipv6
    assert peer6 is not None
    out = ebpf.node.run([sys.executable, "-c", GETPEERNAME, ebpf.peer.ipv4, peer6]).stdout
    assert [json.loads(line) for line in out.splitlines()] == [
        [ebpf.peer.ipv4, 8080],
        [peer6, 8080],
    ]
    # ...while the connection did go to the sidecar.
    assert landed(ebpf.node.probe_connect(ebpf.peer.ipv4, 8080)) == "outbound"


def test_the_root_cgroup_is_refused_from_inside_a_namespace(ebpf: Mesh) -> None:
    path = ebpf.config_file({})
    result = ebpf.sofamesh(
        "hijack",
        "apply",
        "--backend",
        "ebpf",
        "--config",
        str(path),
        "--cgroup",
        str(cgroup2_mount()),
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "error: cgroup: refusing the cgroup2 root" in result.stderr
    assert ebpf.bpf_dump() == ""
    assert landed(ebpf.peer.probe_connect(ebpf.node.ipv4, 8080)) == "node:8080"


def test_dry_run_shows_settings_and_map_contents_without_root_changes(ebpf: Mesh) -> None:
    path = ebpf.config_file(
        {"inbound": {"exclude_ports": ["8000-8100"]}, "outbound": {"exclude_cidrs": ["10.0.0.0/8"]}}
    )
    out = ebpf.sofamesh("rules", "--dry-run", "--backend", "ebpf", "--config", str(path)).stdout
    assert "map settings: enabled=1 proxy_uid=1337" in out
    assert "map ports[inbound] excluded: 8000-8100" in out
    assert "map cidr4 (1 entries): 10.0.0.0/8" in out
    assert "program inbound: attach type 36 on netns of this node" in out
    assert ebpf.bpf_dump() == ""
