"""Throw-away cgroup v2 subtrees for lab VMs (what eBPF cgroup hooks attach to).

cgroup hooks see every process in the cgroup, whatever its network namespace, so a test
that attaches them needs a cgroup holding only its VM's processes. The cgroup2 mount is
found from the mount table: it is not always /sys/fs/cgroup (hybrid hosts mount it at
/sys/fs/cgroup/unified).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path

from netlab.errors import LabError
from netlab.wait import wait_until

_numbers = itertools.count(1)


def cgroup2_mount(mounts: str | None = None) -> Path:
    """The cgroup2 mount point; LabError when the host has none."""
    text = mounts if mounts is not None else Path("/proc/self/mounts").read_text()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(fields[1])
    raise LabError("no cgroup2 file system is mounted (cgroup v2 is needed for eBPF tests)")


class Cgroup:
    """A cgroup v2 directory created for a test, removed (processes killed) on exit."""

    def __init__(self, name: str, parent: Path | None = None) -> None:
        base = parent if parent is not None else cgroup2_mount()
        self.path = base / f"netlab-{os.getpid()}-{next(_numbers)}-{name}"

    def __enter__(self) -> Cgroup:
        self.path.mkdir()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    @property
    def id(self) -> int:
        """The cgroup id the kernel reports in BPF link info (the directory's inode)."""
        return os.stat(self.path).st_ino

    def pids(self) -> list[int]:
        try:
            text = (self.path / "cgroup.procs").read_text()
        except FileNotFoundError:
            return []
        return [int(p) for p in text.split()]

    def remove(self) -> None:
        if not self.path.exists():
            return
        kill = self.path / "cgroup.kill"
        if kill.exists():
            kill.write_text("1")
        else:
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        wait_until(lambda: not self.pids(), deadline=10.0, what=f"cgroup {self.path} empty")
        # rmdir can race the kernel's last exit accounting for a moment: retry briefly.
        wait_until(self._rmdir, deadline=5.0, what=f"cgroup {self.path} removed")

    def _rmdir(self) -> bool:
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True
