"""A network lab of Linux network-namespace "VMs" on one bridge, for the demo and root tests.

Where does a connection from "node" to "peer" land?

with Lab(["node", "peer"]) as lab:
    lab["peer"].spawn(lab["peer"].probe_argv(["listen", "--port", "8080"]))
    lab["peer"].wait_for_port(8080)
    print(lab["node"].probe_connect(lab["peer"].ipv4, 8080))
"""

from netlab.cgroup import Cgroup, cgroup2_mount
from netlab.errors import LabCommandError, LabError, LabTerminated, LabTimeout
from netlab.lab import BRIDGE_IPV4, BRIDGE_IPV6, Lab
from netlab.netns import reap_stale
from netlab.vm import VM
from netlab.wait import wait_until

__all__ = [
    "BRIDGE_IPV4",
    "BRIDGE_IPV6",
    "VM",
    "Cgroup",
    "Lab",
    "LabCommandError",
    "LabError",
    "LabTerminated",
    "LabTimeout",
    "cgroup2_mount",
    "reap_stale",
    "wait_until",
]
