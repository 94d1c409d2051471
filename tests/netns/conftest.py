"""Fixtures for interception tests: one fresh lab per test, the same tests per backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from netlab import Lab
from tests.netns.mesh import NODE_APP_PORTS, PEER_PORTS, Mesh

BACKENDS = ("iptables", "nftables")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def mesh(backend: str, tmp_path: Path) -> Iterator[Mesh]:
    """node (under test), peer and other VMs; probe listeners answer on every app port of
    node and peer, and on the node's redirect ports as "inbound" and "outbound"."""
    with Lab(["node", "peer", "other"], ipv6=True) as lab:
        m = Mesh(lab, backend, tmp_path)
        m.listen(m.node, 15006, "inbound")
        m.listen(m.node, 15001, "outbound")
        for port in NODE_APP_PORTS:
            m.listen(m.node, port)
        for port in PEER_PORTS:
            m.listen(m.peer, port)
        m.listen(m.other, 8080)
        yield m
        m.sofamesh("hijack", "remove", check=False)
