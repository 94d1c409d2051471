"""The network lab itself: topology, isolation from the host, teardown, and the probe.

Every test builds its own lab of namespace VMs; nothing is created in the machine's own
network namespace (one test checks exactly that).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import netlab
from netlab import VM, Lab, LabCommandError, LabError, LabTimeout, reap_stale, wait_until
from netlab.probe import split_hostport

_MISSING = [tool for tool in ("ip", "nsenter", "ss") if shutil.which(tool) is None]

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
    pytest.mark.skipif(bool(_MISSING), reason=f"needs {', '.join(_MISSING)} on PATH"),
]

PROXY_UID = 1337
# Lets child Pythons import this checkout's netlab however pytest found it.
SOURCE_ROOT = str(Path(netlab.__file__).resolve().parent.parent)


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(["node", "peer", "other"], kill_grace=0.5) as the_lab:
        yield the_lab


def listen(vm: VM, port: int, *extra: str, user: int | None = None) -> subprocess.Popen[str]:
    proc = vm.spawn(vm.probe_argv(["listen", "--port", str(port), *extra]), user=user)
    vm.wait_for_port(port, host=None, process=proc)
    return proc


def host_of(hostport: str) -> str:
    return split_hostport(hostport)[0]


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def gone(pid: int) -> bool:
    """True when `pid` no longer runs (a zombie waiting for a reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.netns
def test_vms_reach_each_other_over_ipv4_and_ipv6(lab: Lab) -> None:
    node, peer, other = lab.vms
    listen(node, 8080, "--name", "node")

    via4 = peer.probe_connect(node.ipv4, 8080)
    assert via4["name"] == "node"
    assert via4["local"] == f"{node.ipv4}:8080"
    assert host_of(via4["peer"]) == peer.ipv4
    assert via4["orig_dst"] is None  # no NAT anywhere
    assert via4["uid"] == 0

    assert other.ipv6 is not None
    via6 = other.probe_connect(f"{node.ipv6}", 8080)
    assert via6["local"] == f"[{node.ipv6}]:8080"
    assert host_of(via6["peer"]) == other.ipv6
    assert via6["orig_dst"] is None


@pytest.mark.netns
def test_addresses_names_and_namespaces() -> None:
    with Lab(3) as lab:
        assert [vm.name for vm in lab.vms] == ["vm1", "vm2", "vm3"]
        assert [vm.ipv4 for vm in lab] == ["198.51.100.2", "198.51.100.3", "198.51.100.4"]
        assert [vm.ipv6 for vm in lab] == ["2001:db8::2", "2001:db8::3", "2001:db8::4"]
        assert lab["vm2"] is lab[1]
        assert len({vm.netns for vm in lab} | {lab.bridge_netns}) == 4
        for vm in lab:
            assert vm.netns.startswith(f"smlab-{os.getpid()}-")
            assert os.path.exists(vm.netns_path)
            assert vm.argv(["ss", "-ltn"]) == [
                "nsenter",
                f"--net={vm.netns_path}",
                "--",
                "ss",
                "-ltn",
            ]
        bridge = subprocess.run(
            ["ip", "-n", lab.bridge_netns, "-br", "addr", "show", "br0"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "198.51.100.1/24" in bridge
        assert "2001:db8::1/64" in bridge
    with Lab(1, ipv6=False) as lab:
        assert lab["vm1"].ipv6 is None
        assert "2001:db8" not in lab["vm1"].run(["ip", "addr"]).stdout


@pytest.mark.netns
def test_loopback_is_up(lab: Lab) -> None:
    node = lab["node"]
    assert "UP" in node.run(["ip", "-o", "link", "show", "lo"]).stdout.split(">")[0]
    listen(node, 7000)
    assert host_of(node.probe_connect("127.0.0.1", 7000)["peer"]) == "127.0.0.1"
    assert host_of(node.probe_connect("::1", 7000)["peer"]) == "::1"


@pytest.mark.netns
def test_nothing_leaks_into_the_root_namespace() -> None:
    links_before = root_links()
    with Lab(["a", "b"]) as lab:
        names = set(lab.netns_names)
        assert names <= namespaces()
        assert root_links() == links_before
        lab["a"].spawn(["sleep", "1000"])
    assert root_links() == links_before
    assert not names & namespaces()


@pytest.mark.netns
def test_teardown_on_exception_inside_with() -> None:
    lab = Lab(2, kill_grace=0.5)
    procs = []
    with pytest.raises(RuntimeError, match="boom"), lab:
        assert set(lab.netns_names) <= namespaces()
        procs.append(lab["vm1"].spawn(["sleep", "1000"]))
        raise RuntimeError("boom")
    assert not set(lab.netns_names) & namespaces()
    assert procs[0].returncode == -signal.SIGTERM
    lab.teardown()  # idempotent


@pytest.mark.netns
def test_teardown_kills_spawned_and_stray_processes() -> None:
    with Lab(1, kill_grace=0.3) as lab:
        vm = lab["vm1"]
        tracked = vm.spawn(["sleep", "1000"])
        # Ignores SIGTERM (an ignored signal stays ignored across exec): needs the SIGKILL.
        stubborn = vm.spawn(["sh", "-c", "trap '' TERM; exec sleep 1000"])
        # Started by a command that returned: the lab only finds it through the namespace.
        stray = int(vm.run(["sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo $!"]).stdout)
        assert not gone(stray)
    assert tracked.returncode == -signal.SIGTERM
    assert stubborn.returncode == -signal.SIGKILL
    wait_until(lambda: gone(stray), deadline=5.0, what=f"stray pid {stray} gone")


@pytest.mark.netns
def test_stop_returns_the_output_of_a_spawned_process(lab: Lab) -> None:
    node, peer, _ = lab.vms
    proc = listen(node, 8080)
    for _ in range(3):
        assert "error" not in peer.probe_connect(node.ipv4, 8080)
    out, _err = node.stop(proc)
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 3
    assert {host_of(line["peer"]) for line in lines} == {peer.ipv4}
    assert proc.returncode == 0  # the probe exits cleanly on SIGTERM


@pytest.mark.netns
def test_wait_for_port_times_out_naming_vm_and_port(lab: Lab) -> None:
    started = time.monotonic()
    with pytest.raises(LabTimeout, match=r"vm node: TCP port 9 listening .* after 0\.3s"):
        lab["node"].wait_for_port(9, deadline=0.3)
    assert time.monotonic() - started < 3.0


@pytest.mark.netns
def test_wait_for_port_fails_at_once_when_the_process_dies(lab: Lab) -> None:
    node = lab["node"]
    proc = node.spawn(["sh", "-c", "echo no such luck >&2; exit 4"])
    with pytest.raises(LabError, match="status 4") as info:
        node.wait_for_port(8080, process=proc, deadline=30.0)
    assert not isinstance(info.value, LabTimeout)
    assert info.value.stderr is not None
    assert "no such luck" in info.value.stderr


@pytest.mark.netns
def test_run_failure_carries_command_status_stderr_and_netns(lab: Lab) -> None:
    node = lab["node"]
    with pytest.raises(LabCommandError) as info:
        node.run(["sh", "-c", "echo oops >&2; exit 7"])
    err = info.value
    assert err.returncode == 7
    assert err.stderr == "oops\n"
    assert err.netns == node.netns
    assert err.cmd is not None
    assert err.cmd[-1] == "echo oops >&2; exit 7"
    assert node.run(["false"], check=False).returncode == 1
    with pytest.raises(LabTimeout):
        node.run(["sleep", "5"], timeout=0.2)


@pytest.mark.netns
def test_reap_stale_removes_labs_of_dead_processes_only() -> None:
    # A pid above pid_max can never be alive; an exited child's pid can be reused at once
    # (by the squatter below, say) on a busy machine, which made this test flaky.
    dead_pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    stale, alive = f"smlab-{dead_pid}-1-x", f"smlab-{os.getpid()}-99999-keep"
    try:
        for name in (stale, alive):
            subprocess.run(["ip", "netns", "add", name], check=True)
        squatter = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{stale}", "--", "sleep", "1000"],
            start_new_session=True,
        )
        wait_until(lambda: not gone(squatter.pid), deadline=5.0, what="squatter running")
        removed = reap_stale()
        # A lab started concurrently elsewhere may have reaped it first: check the effect.
        assert all(name.startswith("smlab-") for name in removed)
        assert alive not in removed
        assert stale not in namespaces()
        assert alive in namespaces()
        assert squatter.wait(timeout=5.0) in (-signal.SIGTERM, -signal.SIGKILL)
    finally:
        for name in (stale, alive):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@pytest.mark.netns
def test_user_runs_a_process_as_that_uid(lab: Lab) -> None:
    node, peer, _ = lab.vms
    assert node.run(["id", "-u"], user=PROXY_UID).stdout.strip() == str(PROXY_UID)
    assert node.run(["id", "-g"], user=PROXY_UID).stdout.strip() == str(PROXY_UID)
    listen(node, 8080, user=PROXY_UID)
    assert peer.probe_connect(node.ipv4, 8080)["uid"] == PROXY_UID


def _cgroup2_mount() -> str | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] == "cgroup2":
            return left.split()[4]
    return None


@pytest.mark.netns
def test_spawn_joins_a_cgroup_before_exec(lab: Lab) -> None:
    mount = _cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup2 mount on this machine")
    cgroup = Path(mount) / f"smlab-test-{os.getpid()}"
    cgroup.mkdir()
    try:
        proc = lab["node"].spawn(["cat", "/proc/self/cgroup"], cgroup=str(cgroup))
        out, _ = proc.communicate(timeout=10.0)
        assert f"0::/{cgroup.relative_to(mount)}" in out.splitlines()
    finally:
        cgroup.rmdir()
    with pytest.raises(LabError, match="not a cgroup v2 directory"):
        lab["node"].spawn(["true"], cgroup="/nonexistent")


@pytest.mark.netns
@pytest.mark.skipif(shutil.which("iptables") is None, reason="needs iptables")
def test_orig_dst_is_reported_for_redirected_connections(lab: Lab) -> None:
    node, peer, _ = lab.vms
    for tool in ("iptables", "ip6tables"):
        peer.run(
            [
                *(tool, "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "80"),
                *("-j", "REDIRECT", "--to-ports", "8080"),
            ]
        )
    listen(peer, 8080)
    # With conntrack active in the namespace, a connection that was not redirected
    # reports its own destination; only without any conntrack entry is it null.
    direct = node.probe_connect(peer.ipv4, 8080)
    assert direct["orig_dst"] == direct["local"] == f"{peer.ipv4}:8080"
    assert node.probe_connect(peer.ipv4, 80)["orig_dst"] == f"{peer.ipv4}:80"
    assert node.probe_connect(f"{peer.ipv6}", 80)["orig_dst"] == f"[{peer.ipv6}]:80"


@pytest.mark.netns
@pytest.mark.skipif(shutil.which("iptables") is None, reason="needs iptables")
def test_forward_probe_carries_connections_to_their_original_destination(lab: Lab) -> None:
    node, peer, _ = lab.vms
    listen(node, 9000, "--name", "local-app")
    listen(peer, 9000, "--name", "remote-app")
    # Istio's outbound shape: everything to port 9000 except the proxy's own goes to it.
    for tool in ("iptables", "ip6tables"):
        node.run(
            [
                *(tool, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9000"),
                *("-m", "owner", "!", "--uid-owner", str(PROXY_UID)),
                *("-j", "REDIRECT", "--to-ports", "15001"),
            ]
        )
    forward = node.spawn(
        node.probe_argv(["forward", "--port", "15001", "--source", "127.0.0.6"]),
        user=PROXY_UID,
    )
    node.wait_for_port(15001, process=forward)

    local = node.probe_connect("127.0.0.1", 9000)
    assert local["name"] == "local-app"
    assert host_of(local["peer"]) == "127.0.0.6"  # the proxy's source, as Istio uses
    remote = node.probe_connect(f"{peer.ipv6}", 9000, send="hello")
    assert remote["name"] == "remote-app"
    assert host_of(remote["peer"]) == node.ipv6

    out, _ = node.stop(forward)
    logged = [json.loads(line) for line in out.splitlines()]
    assert [entry["orig_dst"] for entry in logged] == ["127.0.0.1:9000", f"[{peer.ipv6}]:9000"]
    assert all("error" not in entry for entry in logged)


@pytest.mark.netns
def test_connect_reports_refused_as_data(lab: Lab) -> None:
    node, peer, _ = lab.vms
    assert peer.probe_connect(node.ipv4, 1) == {"error": "refused"}


CHILD = """
import signal
import sys
from netlab import Lab

# Like an interactive Python: a shell's background job would inherit SIGINT ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)
lab = Lab(2)
if sys.argv[1] == "atexit":
    lab.start()
    print(" ".join(lab.netns_names), flush=True)
    sys.exit(0)
with lab:
    sleeper = lab["vm1"].spawn(["sleep", "1000"])
    print(" ".join(lab.netns_names), sleeper.pid, flush=True)
    sys.stdin.read()
"""


@pytest.mark.netns
@pytest.mark.parametrize(
    ("how", "marker"),
    [
        ("SIGTERM", "LabTerminated"),
        ("SIGINT", "KeyboardInterrupt"),
        ("atexit", None),
    ],
)
def test_lab_is_torn_down_on_signals_and_at_exit(how: str, marker: str | None) -> None:
    env = {**os.environ, "PYTHONPATH": SOURCE_ROOT}
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as child:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 15.0)
        assert ready, "child lab did not start"
        words = child.stdout.readline().split()
        if marker is not None:
            child.send_signal(signal.Signals[how])
        _out, err = child.communicate(timeout=15.0)
    if marker is None:
        assert child.returncode == 0, err
        names = words
    else:
        assert child.returncode != 0
        assert marker in err
        names, sleeper = words[:-1], int(words[-1])
        wait_until(lambda: gone(sleeper), deadline=5.0, what="the child lab's sleeper gone")
    assert len(names) == 3
    assert not set(names) & namespaces()


@pytest.mark.netns
def test_wait_until_returns_the_value_or_times_out() -> None:
    values = iter([None, 0, "ready"])
    assert wait_until(lambda: next(values), deadline=5.0, interval=0.001, what="x") == "ready"
    with pytest.raises(LabTimeout, match=r"the sky falling not true after 0\.05s"):
        wait_until(lambda: False, deadline=0.05, what="the sky falling")
