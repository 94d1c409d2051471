"""A lab of namespace "VMs" on one bridge, torn down whatever happens.

Topology: the bridge `br0` lives in its own namespace with 198.51.100.1/24 and
2001:db8::1/64; each VM has `lo` up and `eth0` (a veth whose other end is a bridge port)
with 198.51.100.<k>/24 and 2001:db8::<k>/64, k = 2, 3, ... in order, and default routes
via the bridge. The veths are created inside the bridge namespace, so nothing ever
appears in the machine's own namespace, not even for a moment.
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
import shutil
import signal
import threading
from collections.abc import Iterator, Sequence
from types import FrameType, TracebackType

from netlab import netns
from netlab.errors import LabError, LabTerminated
from netlab.procs import ProcessTracker
from netlab.runner import run_cmd
from netlab.signals import Handler, restore, signals_deferred
from netlab.vm import IPV4_PREFIX, IPV6_PREFIX, VM

BRIDGE = "br0"
BRIDGE_IPV4 = f"{IPV4_PREFIX}1"
BRIDGE_IPV6 = f"{IPV6_PREFIX}1"
FIRST_HOST = 2
MAX_VMS = 254 - FIRST_HOST + 1
TOOLS = ("ip", "nsenter", "ss")

_VM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_lab_numbers = itertools.count(1)

# Runs inside a fresh namespace before its interfaces come up: IPv6 on, and no duplicate
# address detection, so addresses (link-local ones too) are usable at once.
_IPV6_NOW = """set -e
for conf in /proc/sys/net/ipv6/conf/*/; do
  echo 0 > "${conf}disable_ipv6"
  echo 0 > "${conf}accept_dad"
done
exec ip -batch -
"""


class Lab:
    """N network-namespace VMs on one bridge. Use as a context manager.

    `vms` is a count (names vm1..vmN) or a list of names. `kill_grace` is how long
    processes get between SIGTERM and SIGKILL at teardown.
    """

    def __init__(
        self, vms: int | Sequence[str], *, ipv6: bool = True, kill_grace: float = 1.0
    ) -> None:
        names = [f"vm{i}" for i in range(1, vms + 1)] if isinstance(vms, int) else list(vms)
        _check_names(names)
        self.ipv6 = ipv6
        self.kill_grace = kill_grace
        self._owner = os.getpid()
        self._base = f"{netns.PREFIX}{self._owner}-{next(_lab_numbers)}"
        self._tracker = ProcessTracker()
        self._vms = [
            VM(
                name=name,
                index=FIRST_HOST + i,
                netns=f"{self._base}-{name}",
                ipv6=ipv6,
                tracker=self._tracker,
            )
            for i, name in enumerate(names)
        ]
        self._state = "new"
        self._previous_sigterm: Handler = None
        self._sigterm_installed = False

    @property
    def vms(self) -> list[VM]:
        return list(self._vms)

    @property
    def bridge_netns(self) -> str:
        return self._base

    @property
    def bridge_ipv4(self) -> str:
        return BRIDGE_IPV4

    @property
    def bridge_ipv6(self) -> str | None:
        return BRIDGE_IPV6 if self.ipv6 else None

    @property
    def netns_names(self) -> list[str]:
        """Every namespace of this lab: the bridge's first, then the VMs' in order."""
        return [self._base, *(vm.netns for vm in self._vms)]

    def __getitem__(self, key: str | int) -> VM:
        if isinstance(key, int):
            return self._vms[key]
        for vm in self._vms:
            if vm.name == key:
                return vm
        raise KeyError(f"no vm named {key!r} in this lab")

    def __iter__(self) -> Iterator[VM]:
        return iter(self._vms)

    def __len__(self) -> int:
        return len(self._vms)

    def __repr__(self) -> str:
        return f"Lab({[vm.name for vm in self._vms]!r}, netns={self._base!r}, {self._state})"

    def __enter__(self) -> Lab:
        self._install_sigterm()
        try:
            self.start()
        except BaseException:
            self._restore_sigterm()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.teardown()
        finally:
            self._restore_sigterm()

    def start(self) -> Lab:
        """Create the namespaces, the bridge and the VMs (for use without `with`)."""
        if self._state != "new":
            raise LabError(f"a lab is started once; this one is {self._state}")
        if os.getpid() != self._owner:
            raise LabError("a lab must be started by the process that created it")
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
        if missing:
            raise LabError(f"missing tools: {', '.join(missing)} (install iproute2, util-linux)")
        if self.ipv6 and not os.path.isdir("/proc/sys/net/ipv6"):
            raise LabError("this kernel has IPv6 disabled; use Lab(..., ipv6=False)")
        self._state = "running"
        atexit.register(self.teardown)  # last resort when neither `with` nor teardown() ran
        try:
            netns.reap_stale()
            netns.add_namespaces(self.netns_names)
            self._configure(self._base, self._bridge_batch())
            for vm in self._vms:
                self._configure(vm.netns, self._vm_batch(vm))
        except BaseException:
            self.teardown()
            raise
        return self

    def teardown(self) -> None:
        """Kill every process in the lab's namespaces and delete them. Idempotent."""
        if self._state != "running" or os.getpid() != self._owner:
            return
        self._state = "torn down"
        atexit.unregister(self.teardown)
        with signals_deferred():
            problems = []
            try:
                netns.kill_all_in(self.netns_names, grace=self.kill_grace, tracker=self._tracker)
            except LabError as exc:
                problems.append(str(exc))
            left = netns.delete_namespaces(self.netns_names)
            if left:
                problems.append(f"namespaces not deleted: {', '.join(left)}")
            if problems:
                raise LabError(f"lab {self._base} teardown incomplete: " + "; ".join(problems))

    def _configure(self, name: str, batch: list[str]) -> None:
        if self.ipv6:
            argv = ["nsenter", f"--net={netns.netns_path(name)}", "--", "sh", "-c", _IPV6_NOW]
        else:
            argv = ["ip", "-n", name, "-batch", "-"]
        run_cmd(argv, input="".join(f"{line}\n" for line in batch), netns=name)

    def _bridge_batch(self) -> list[str]:
        lines = [
            "link set lo up",
            f"link add {BRIDGE} type bridge stp_state 0 mcast_snooping 0",
            f"addr add {BRIDGE_IPV4}/24 dev {BRIDGE}",
        ]
        if self.ipv6:
            lines.append(f"addr add {BRIDGE_IPV6}/64 dev {BRIDGE} nodad")
        lines.append(f"link set {BRIDGE} up")
        for vm in self._vms:
            port = f"veth{vm.index}"
            lines.append(f"link add {port} type veth peer name eth0 netns {vm.netns}")
            lines.append(f"link set {port} master {BRIDGE} up")
        return lines

    def _vm_batch(self, vm: VM) -> list[str]:
        lines = ["link set lo up", f"addr add {vm.ipv4}/24 dev eth0"]
        if vm.ipv6 is not None:
            lines.append(f"addr add {vm.ipv6}/64 dev eth0 nodad")
        lines += ["link set eth0 up", f"route add default via {BRIDGE_IPV4}"]
        if vm.ipv6 is not None:
            lines.append(f"route add default via {BRIDGE_IPV6}")
        return lines

    def _install_sigterm(self) -> None:
        # Python sets handlers only in the main thread; elsewhere atexit is the fallback.
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._sigterm_installed = True

    def _restore_sigterm(self) -> None:
        if self._sigterm_installed:
            restore(signal.SIGTERM, self._previous_sigterm)
            self._sigterm_installed = False

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        raise LabTerminated(f"SIGTERM received while lab {self._base} was running")


def _check_names(names: list[str]) -> None:
    if not 1 <= len(names) <= MAX_VMS:
        raise ValueError(f"a lab has 1 to {MAX_VMS} vms, not {len(names)}")
    for name in names:
        if not _VM_NAME.match(name):
            raise ValueError(f"bad vm name {name!r}: use letters, digits, '_', '.', '-'")
    if len(set(names)) != len(names):
        raise ValueError(f"vm names must be unique: {names}")
