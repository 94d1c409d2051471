"""The node agent end to end (issue 5): install with the seed options, the console's
switches, parameters and limits reaching the node, supervision, outages, uninstall."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.exit_codes import ExitStatus
from netlab import VM
from tests.e2e.artifacts import build_artifacts
from tests.e2e.conftest import (
    APP_PORT,
    APPS,
    REPO,
    Mesh,
    Node,
    elapsed,
    get,
    load,
    tree,
    wait_for,
)

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
    done = node.sofamesh("hijack", "status", "--json")
    doc = json.loads(done.stdout)
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
    version = server.status()["config"]["version"]
    installed.set_params()
    server.wait_status(
        "the rules without the blacklist",
        lambda d: d["config"]["version"] != version and d["converged"],
        5,
    )
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


def test_flushed_rules_are_repaired_and_the_agent_reports_itself(installed: Mesh) -> None:
    server = installed.nodes["server"]
    digest = server.status()["rules"]["digest"]

    def applies() -> int:
        return server.sofamesh("logs", "-n", "1000").stdout.count("apply the interception rules")

    before = applies()
    server.sofamesh("hijack", "remove")  # an admin flushes our rules by hand
    wait_for("the agent to re-apply the rules", lambda: applies() > before, deadline=10)
    wait_for("the rules back in the kernel", lambda: rules_installed(server), deadline=15)
    server.wait_status("rules repaired", lambda d: d["rules"]["digest"] == digest, 5)
    metrics = server.vm.run(["curl", "-sS", "-m", "5", "http://127.0.0.1:15020/metrics"])
    assert 'sofamesh_agent_sidecar_state{state="RUNNING"} 1' in metrics.stdout
    assert "sofamesh_agent_rules_installed 1" in metrics.stdout
    assert "sofamesh_agent_console_reachable 1" in metrics.stdout
    human = server.sofamesh("status").stdout
    assert "converged  True" in human and "Running healthy=True" in human, human


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


def test_secret_is_in_no_log_no_readable_file_no_process_arguments(installed: Mesh) -> None:
    server = installed.nodes["server"]
    secret = installed.secret.encode()
    verbose = server.sofamesh("-v", "status")
    assert installed.secret not in verbose.stdout + verbose.stderr
    bpffs = server.root / "sys"  # a kernel file system (eBPF pins), not files we wrote
    for path in server.root.rglob("*"):
        if bpffs in path.parents:
            continue
        if path.is_file() and not path.is_symlink() and secret in path.read_bytes():
            mode = path.stat().st_mode
            assert path.name == "secret", path
            assert mode & 0o077 == 0 and path.stat().st_uid == 0, (path, oct(mode))
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            assert secret not in cmdline.read_bytes(), cmdline
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if b"sofamesh" in Path(environ.parent / "cmdline").read_bytes():
                assert secret not in environ.read_bytes(), environ
    assert secret.decode() not in installed.console_log()


def snapshot(node: Node) -> dict[str, Any]:
    """What uninstall must give back: rules (both netfilter variants), the VM's processes,
    users and groups, and every file under the node's root."""
    vm = node.vm

    def run(*argv: str) -> str:
        out = vm.run(list(argv), check=False).stdout
        # iptables-save stamps the time and counts packets: neither is state we left.
        lines = [re.sub(r"\[\d+:\d+\]", "[-]", ln) for ln in out.splitlines()]
        return "\n".join(ln for ln in lines if not ln.startswith("#"))

    procs = sorted(
        Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
        for pid in run("ip", "netns", "pids", vm.netns).split()
        if Path(f"/proc/{pid}/cmdline").exists()
    )
    return {
        "nft": run("nft", "list", "ruleset"),
        "iptables-legacy": run("iptables-legacy-save", "-t", "nat"),
        "ip6tables-legacy": run("ip6tables-legacy-save", "-t", "nat"),
        "processes": procs,
        "users": Path("/etc/passwd").read_text() + Path("/etc/group").read_text(),
        "files": tree(node.root),
    }


def test_script_install_is_idempotent_and_uninstall_leaves_nothing(fresh: Mesh) -> None:
    server, client = fresh.nodes["server"], fresh.nodes["client"]
    package = build_artifacts(fresh.base / "artifacts", fresh.agent_url)
    before = snapshot(server)
    seed = [
        "-t", fresh.tenant, "-w", fresh.workspace, "-i", fresh.instance, "-n", fresh.app,
        "-a", fresh.key_id, "-s", fresh.secret, "-f", str(package),
        "--proxy-user", server.proxy_user, "--backend", fresh.backend,
        *(["--cgroup", server.cgroup] if server.cgroup else []),
    ]  # fmt: skip
    done = server.script("install", *seed)
    assert "installed: app web" in done.stdout, done.stdout + done.stderr
    again = server.script("install", *seed)
    assert "already installed with these parameters: nothing to do" in again.stdout
    client.install()
    assert get(client.vm, server.vm.ipv4).get("statuses") == [200]
    assert server.requests_seen("inbound") >= 1
    status = json.loads(server.script("status", "--json").stdout)
    assert status["node"]["converged"] is True
    server.script("uninstall")
    client.uninstall()  # users are machine-wide: compare with neither node installed
    assert snapshot(server) == before
    assert get(client.vm, server.vm.ipv4).get("statuses") == [200]


@pytest.mark.parametrize(
    ("override", "env", "code", "says"),
    [
        ({}, {"SOFAMESH_SECRETKEY": "wrong-secret"}, ExitStatus.CONSOLE, "--secretkey"),
        ({"-t": "no-such-tenant"}, {}, ExitStatus.NOT_REGISTERED, "--tenant"),
        ({"-n": "no-such-app"}, {}, ExitStatus.NOT_REGISTERED, "--appname"),
        ({"-n": "bad_name!"}, {}, ExitStatus.BAD_INPUT, "--appname"),
        ({"--console": "http://198.51.100.250:8000"}, {}, ExitStatus.CONSOLE, "--console"),
        # No nft on PATH: the nftables backend cannot run here.
        ({"--backend": "nftables"}, {"PATH": "/usr/bin:/bin"}, ExitStatus.BACKEND_UNSUPPORTED,
         "nftables"),
    ],
)  # fmt: skip
def test_install_errors_name_the_cause_and_install_nothing(
    fresh: Mesh, override: dict[str, str], env: dict[str, str], code: int, says: str
) -> None:
    server = fresh.nodes["server"]
    before = snapshot(server)
    secret = {"SOFAMESH_SECRETKEY": fresh.secret}
    done = server.sofamesh(*server.install_args(**override), env={**secret, **env}, check=False)
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert done.returncode == code, done.stdout + done.stderr
    assert len(errors) == 1 and says in errors[0], done.stderr
    assert fresh.secret not in done.stdout + done.stderr
    assert snapshot(server) == before


def test_install_needs_root(fresh: Mesh) -> None:
    server = fresh.nodes["server"]
    before = snapshot(server)
    done = server.vm.run(
        [sys.executable, "-m", "agent", "--root", str(server.root),
         *server.install_args()],
        env={"PYTHONPATH": str(REPO), "SOFAMESH_SECRETKEY": fresh.secret},
        user=65534,
        check=False,
    )  # fmt: skip
    assert done.returncode == ExitStatus.NOT_ROOT, done.stdout + done.stderr
    assert "needs root" in done.stderr
    assert snapshot(server) == before


def test_two_installs_at_once_one_waits(fresh: Mesh) -> None:
    server = fresh.nodes["server"]
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO),
           "SOFAMESH_SECRETKEY": fresh.secret}  # fmt: skip
    argv = [sys.executable, "-m", "agent", "--root", str(server.root), *server.install_args()]
    first, second = (
        server.vm.spawn(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    )
    outputs = [proc.communicate(timeout=120) for proc in (first, second)]
    codes = sorted(proc.returncode for proc in (first, second))
    texts = sorted(out for out, _ in outputs)
    assert codes == [0, 0], outputs
    assert any("installed: app web" in t for t in texts), outputs
    assert any("already installed with these parameters" in t for t in texts), outputs
    assert server.wait_status("one converged node", lambda d: d["converged"], 10)
