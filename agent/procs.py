"""Processes the agent did not start itself but must keep: pid files that survive a reused
pid, adopting a running sidecar after an agent restart, and the node's locks (R-AG-8).

A pid file holds the pid and the process's start time (in clock ticks since boot, from
/proc/<pid>/stat): a pid is only believed when both match, so a reused pid is never
signalled. An adopted process is watched through a pidfd, which becomes readable when it
exits, the same way a child is watched with waitpid.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.errors import Busy
from agent.paths import read_json, write_json_atomic


def start_ticks(pid: int) -> int | None:
    """The process's start time, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may hold spaces: split after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def write_pid(path: Path, pid: int) -> None:
    write_json_atomic(path, {"pid": pid, "start": start_ticks(pid)}, mode=0o644)


def read_pid(path: Path) -> int | None:
    """The pid in the file if that very process still runs, else None."""
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("pid"), int):
        return None
    pid: int = doc["pid"]
    if start_ticks(pid) != doc.get("start") or is_zombie(pid):
        return None
    return pid


def created_at(pid: int) -> float | None:
    """Wall-clock start time of the process (for the console's "created" column)."""
    ticks = start_ticks(pid)
    if ticks is None:
        return None
    boot = next(
        float(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime ")
    )
    return boot + ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Adopted:
    """A running process we did not fork, with the part of Popen's interface the supervisor
    uses: pid, poll(). Its exit status is not ours to read (its parent reaps it)."""

    pid: int
    _fd: int

    @classmethod
    def open(cls, pid: int) -> Adopted | None:
        try:
            return cls(pid, os.pidfd_open(pid))
        except ProcessLookupError:
            return None

    def poll(self) -> int | None:
        if self._fd < 0:
            return -1
        readable, _, _ = select.select([self._fd], [], [], 0)
        if readable or is_zombie(self.pid):
            os.close(self._fd)
            self._fd = -1
            return -1
        return None

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            select.select([self._fd], [], [], min(remaining, 0.2))
        return -1


def stop_process(pid: int, timeout: float, sig: signal.Signals = signal.SIGTERM) -> bool:
    """Signal the process group led by pid, wait until it is gone, SIGKILL after timeout.
    True if it stopped within the timeout."""
    handle = Adopted.open(pid)
    if handle is None:
        return True
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    if handle.wait(timeout) is not None:
        return True
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    handle.wait(5)
    return False


@contextlib.contextmanager
def locked(path: Path, what: str, wait: float) -> Iterator[None]:
    """Hold an exclusive flock on path; wait up to `wait` seconds for it, then raise Busy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = path.read_text().strip() or "another process"
                    raise Busy(
                        f"{what}: {holder} holds {path}; waited {wait:g}s. "
                        "Let it finish, then run the command again."
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.write(fd, f"{what} (pid {os.getpid()})\n".encode())
        yield
    finally:
        os.close(fd)
