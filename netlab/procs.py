"""Processes a lab started: each leads its own process group so it can be stopped whole."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading

KILL_DEADLINE = 5.0
"""Seconds to wait for a process group to die after SIGKILL."""


class ProcessTracker:
    """The spawned processes of one lab, stopped and reaped at teardown."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[str]] = []
        self._lock = threading.Lock()

    def add(self, proc: subprocess.Popen[str]) -> None:
        with self._lock:
            self._procs.append(proc)

    def __len__(self) -> int:
        with self._lock:
            return len(self._procs)

    def stop(self, proc: subprocess.Popen[str], *, timeout: float = 5.0) -> tuple[str, str]:
        """SIGTERM the process group, SIGKILL it after `timeout`; return (stdout, stderr)."""
        signal_group(proc, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            signal_group(proc, signal.SIGKILL, force=True)
            out, err = proc.communicate(timeout=KILL_DEADLINE)
        with self._lock:
            if proc in self._procs:
                self._procs.remove(proc)
        return out or "", err or ""

    def signal_all(self, sig: signal.Signals) -> None:
        for proc in self._snapshot():
            signal_group(proc, sig)

    def all_exited(self) -> bool:
        return all(proc.poll() is not None for proc in self._snapshot())

    def close_all(self) -> None:
        """Reap and close the pipes of every tracked process, and forget them."""
        with self._lock:
            procs = list(self._procs)
            self._procs.clear()
        for proc in procs:
            close(proc)

    def _snapshot(self) -> list[subprocess.Popen[str]]:
        with self._lock:
            return list(self._procs)


def signal_group(proc: subprocess.Popen[str], sig: signal.Signals, *, force: bool = False) -> None:
    """Signal the process group `proc` leads.

    By default only while the leader is unreaped: then its pid cannot have been reused as
    a pgid. `force` is for when a group member is known to live (it holds a pipe open).
    """
    if force or proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)


def close(proc: subprocess.Popen[str]) -> None:
    """Close the pipes of an exited process (no ResourceWarning later)."""
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    proc.poll()
