"""The README's demo runs the whole flow (console, two installs, traffic through both
sidecars into the console's metrics, switch off and on, uninstall), exits 0, and leaves
no namespace, proxy user or temporary directory behind."""

from __future__ import annotations

import glob
import pwd
import subprocess
import sys

import pytest

pytestmark = pytest.mark.netns


def test_demo_runs_the_whole_flow_and_cleans_up() -> None:
    before = set(glob.glob("/tmp/sofamesh-demo-*"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    assert out.count(": installed: app web") == 2, out
    traffic = out.split("5. client -> server")[1].split("6. ")[0]
    assert traffic.count(": 200") == 5, traffic
    assert "client sidecar counted 5 outbound, server sidecar 5 inbound requests" in traffic
    assert "console: app web served 5 requests" in traffic
    assert traffic.count(" Running healthy=True") == 2, traffic
    off = out.split("6. operator switches the server off")[1].split("7. ")[0]
    assert "rules removed" in off and "200 (straight to the app now)" in off
    back = out.split("7. and back on")[1].split("8. ")[0]
    assert "200; the server's new sidecar counted 1" in back, back
    assert out.count("uninstalled: rules, sidecar, agent, user and files removed") == 2
    assert "server ruleset after uninstall: (empty)" in out
    assert "::ffff:127.0.0.6" in out  # the app was reached through its sidecar
    assert "demo finished: exit 0" in out
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert f"smlab-{proc.pid}-" not in left.stdout
    assert set(glob.glob("/tmp/sofamesh-demo-*")) == before
    for name in ("sofamesh-demo-server", "sofamesh-demo-client"):
        with pytest.raises(KeyError):
            pwd.getpwnam(name)
