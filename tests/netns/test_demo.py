"""The README's demo runs, shows interception through the stand-in sidecar, and leaves
no namespace behind."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.netns


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_demo_shows_interception_and_cleans_up(backend: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "demo", "--backend", backend],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert f"applied: backend {backend}" in out
    inbound = out.split("3. inbound")[1].split("port 9090")[0]
    assert "answered by node-app:8080, which saw the connection come from 127.0.0.6:" in inbound
    assert "stand-in sidecar (inbound) carried 1 connection(s)" in out
    assert "stand-in sidecar (outbound) carried 1 connection(s)" in out
    assert "removed from" in out
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert f"smlab-{proc.pid}-" not in left.stdout
