"""Named network namespaces: create, find the processes inside, delete, reap leftovers.

Every namespace the lab creates is named `smlab-<pid>-<n>[-<vm>]`, where <pid> is the
creating process: that is how `reap_stale` tells a dead lab's leftovers from a live one's.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Iterable, Mapping, Sequence

from netlab.errors import LabError, LabTimeout
from netlab.procs import ProcessTracker
from netlab.runner import run_cmd
from netlab.wait import wait_until

PREFIX = "smlab-"
NETNS_DIR = "/run/netns"
KILL_DEADLINE = 5.0
"""Seconds to wait for processes to disappear after SIGKILL."""

_NAME_RE = re.compile(r"^smlab-(?P<pid>\d+)-(?P<lab>\d+)(?:-.+)?$")


def netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def owner_pid(name: str) -> int | None:
    """The pid encoded in a lab namespace name, or None when the name is not a lab's."""
    match = _NAME_RE.match(name)
    return int(match["pid"]) if match else None


def ip_batch(
    lines: Sequence[str], *, netns: str | None = None, force: bool = False, check: bool = True
) -> None:
    """Run iproute2 commands in one `ip -batch` process (optionally inside `netns`)."""
    argv = ["ip"]
    if netns is not None:
        argv += ["-n", netns]
    if force:
        argv.append("-force")
    argv += ["-batch", "-"]
    run_cmd(argv, input="".join(f"{line}\n" for line in lines), check=check, netns=netns)


def add_namespaces(names: Sequence[str]) -> None:
    ip_batch([f"netns add {name}" for name in names])


def existing(names: Iterable[str]) -> list[str]:
    return [name for name in names if os.path.exists(netns_path(name))]


def delete_namespaces(names: Sequence[str]) -> list[str]:
    """Delete the namespaces that exist; return the names that could not be deleted."""
    present = existing(names)
    if present:
        # -force: one failure must not keep the others alive; the check below reports it.
        ip_batch([f"netns del {name}" for name in present], force=True, check=False)
    return existing(present)


def pids_in(names: Iterable[str]) -> dict[str, set[int]]:
    """Live processes whose network namespace is one of `names` (like `ip netns pids`)."""
    by_inode: dict[tuple[int, int], str] = {}
    result: dict[str, set[int]] = {}
    for name in names:
        result[name] = set()
        try:
            st = os.stat(netns_path(name))
        except OSError:
            continue
        by_inode[(st.st_dev, st.st_ino)] = name
    if not by_inode:
        return result
    me = os.getpid()
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                st = os.stat(f"/proc/{entry.name}/ns/net")
            except OSError:  # gone, or a zombie (which has no namespaces left)
                continue
            owner = by_inode.get((st.st_dev, st.st_ino))
            if owner is not None:
                result[owner].add(int(entry.name))
    return result


def signal_pids(pids: Mapping[str, set[int]], sig: signal.Signals) -> None:
    for group in pids.values():
        for pid in group:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def kill_all_in(
    names: Sequence[str], *, grace: float, tracker: ProcessTracker | None = None
) -> None:
    """SIGTERM everything inside `names`, SIGKILL what is left after `grace` seconds.

    The process groups of `tracker` get the same signals, and are reaped and closed.
    """
    steps = ((signal.SIGTERM, grace), (signal.SIGKILL, KILL_DEADLINE))
    try:
        for sig, deadline in steps:
            if tracker is not None:
                tracker.signal_all(sig)
            signal_pids(pids_in(names), sig)
            try:
                wait_until(
                    lambda: (
                        (tracker is None or tracker.all_exited())
                        and not any(pids_in(names).values())
                    ),
                    deadline=deadline,
                    what=f"no processes left in {', '.join(names)}",
                )
                return
            except LabTimeout:
                if sig is signal.SIGKILL:
                    raise
    finally:
        if tracker is not None:
            tracker.close_all()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale() -> list[str]:
    """Remove lab namespaces whose creating process is gone; return their names.

    A lab whose creator still runs is never touched, so concurrent test runs are safe.
    """
    try:
        names = sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []
    stale = [
        name
        for name in names
        if (pid := owner_pid(name)) is not None and pid != os.getpid() and not pid_alive(pid)
    ]
    if not stale:
        return []
    kill_all_in(stale, grace=0.0)
    left = delete_namespaces(stale)
    if left:
        raise LabError(f"could not delete stale lab namespaces: {', '.join(left)}")
    return stale
