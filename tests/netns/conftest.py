"""Fixtures for interception tests: one fresh lab per test, the same tests per backend.

For eBPF the node VM also gets its own cgroup v2 subtree: every node process (listeners,
probes, the CLI) runs in it, and the cgroup hooks attach to it, never to the root cgroup.
Its pins live on a bpffs mounted under the test's root directory, unmounted at teardown.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from netlab import Cgroup, Lab
from tests.netns.ebpf_env import ebpf_skip_reason
from tests.netns.mesh import NODE_APP_PORTS, PEER_PORTS, Mesh

BACKENDS = ("iptables", "nftables", "ebpf")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if name == "ebpf" and (reason := ebpf_skip_reason()):
        pytest.skip(reason)
    return name


@pytest.fixture
def mesh(backend: str, tmp_path: Path) -> Iterator[Mesh]:
    """node (under test), peer and other VMs; probe listeners answer on every app port of
    node and peer, and on the node's redirect ports as "inbound" and "outbound"."""
    with ExitStack() as stack, Lab(["node", "peer", "other"], ipv6=True) as lab:
        m = Mesh(lab, backend, tmp_path)
        if backend == "ebpf":
            cgroup = stack.enter_context(Cgroup("node"))
            m.cgroup = cgroup
            m.node.cgroup = str(cgroup.path)
            stack.callback(_unmount, m.bpffs)
        m.listen(m.node, 15006, "inbound")
        m.listen(m.node, 15001, "outbound")
        for port in NODE_APP_PORTS:
            m.listen(m.node, port)
        for port in PEER_PORTS:
            m.listen(m.peer, port)
        m.listen(m.other, 8080)
        yield m
        m.sofamesh("hijack", "remove", check=False)


def _unmount(path: Path) -> None:
    """Safety net: unmounting the test's bpffs drops any pin a failed test left behind,
    which detaches its links and frees its programs and maps."""
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
