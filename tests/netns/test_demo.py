"""The README's demo runs, shows traffic through the sidecar and its counters, and leaves
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
    through = out.split("4. inbound")[1].split("blacklisted port 9090")[0]
    assert through.count("-> 200 27 bytes") == 3
    assert "-> 404" in through
    counted = out.split("6. what the sidecar counted")[1].split("\n7. ")[0]
    assert "inbound port 8080  connections 4 requests 4 2xx 3 4xx 1" in counted
    assert "outbound port 8080  connections 1" in counted
    assert "removed from" in out
    assert "sidecar drained and exited with status 0" in out
    assert "the app saw requests from: ::ffff:127.0.0.6, ::ffff:198.51.100.3" in out
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert f"smlab-{proc.pid}-" not in left.stdout
