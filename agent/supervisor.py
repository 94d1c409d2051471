"""The sidecar supervisor: an explicit state machine, after supervisord's model (R-AG-4).

    STOPPED -> STARTING -> RUNNING -> (crash) -> BACKOFF -> STARTING ...
    STARTING -> (exits before startsecs) -> BACKOFF, or FATAL once startretries are spent
    RUNNING | STARTING | BACKOFF -> STOPPING -> STOPPED (SIGKILL after stop_timeout)

The machine is driven by tick(), called by the daemon's loop (and by tests) with the time;
it never sleeps. Every transition is logged in one fixed wording and reported to the
listener, which is how the daemon fails open (removes the rules) on BACKOFF or FATAL.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

log = logging.getLogger("sofamesh.agent.supervisor")


class State(enum.Enum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"


@dataclass(frozen=True)
class ProgramSpec:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    user: int | None = None  # run as this uid (the proxy user)
    startsecs: float = 1.0  # up this long = started
    startretries: int = 3  # failed starts in a row before FATAL
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 20.0  # then SIGKILL (the sidecar's drain timeout plus margin)
    # stdout and stderr go here (appended), never to a pipe: the sidecar must outlive the
    # agent, and a pipe whose reader died would kill it with SIGPIPE.
    log_file: Path | None = None


class Child(Protocol):
    """What the supervisor needs of a process: a Popen, or one adopted after a restart."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...


Listener = Callable[[State, State, str], None]


@dataclass
class Supervisor:
    spec: ProgramSpec
    clock: Callable[[], float] = time.monotonic
    listener: Listener | None = None
    # Called right after each spawn: the pid file, cgroup placement, oom_score_adj. (Not a
    # preexec_fn: the agent has threads, and code between fork and exec must not.)
    on_spawn: Callable[[int], None] | None = None
    state: State = State.STOPPED
    proc: Child | None = None
    failures: int = 0  # failed starts in a row
    restarts: int = 0  # every start after the first
    last_exit: int | None = None
    _since: float = field(default=0.0)
    _next_start: float = field(default=0.0)
    _stop_sent: float = field(default=0.0)
    _killed: bool = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self) -> None:
        if self.state in (State.STOPPED, State.EXITED, State.FATAL):
            self.failures = 0
            self._spawn("start requested")

    def adopt(self, proc: Child) -> None:
        """Take over a process a previous agent started (it kept running without us)."""
        self.proc, self.failures, self._killed = proc, 0, False
        self._go(State.RUNNING, f"adopted running pid {proc.pid}")

    def stop(self) -> None:
        if self.state in (State.STARTING, State.RUNNING):
            assert self.proc is not None
            self._signal(self.spec.stop_signal)
            self._stop_sent = self.clock()
            self._go(State.STOPPING, f"sent {self.spec.stop_signal.name}")
        elif self.state == State.BACKOFF:
            self._go(State.STOPPED, "stop requested while waiting to restart")

    def tick(self) -> State:
        """Advance the machine to what the process and the clock say now."""
        now = self.clock()
        state = self.state
        code = self.proc.poll() if self.proc is not None else None
        if state == State.STARTING:
            if code is not None:
                self._failed_start(code)
            elif now - self._since >= self.spec.startsecs:
                self.failures = 0
                self._go(
                    State.RUNNING,
                    f"up for {self.spec.startsecs:g}s, pid {self.proc.pid if self.proc else '?'}",
                )
        elif state == State.RUNNING:
            if code is not None:
                self.last_exit = code
                self.failures = 1
                self._schedule_restart(f"exited unexpectedly with status {code}")
        elif state == State.BACKOFF:
            if now >= self._next_start:
                self.restarts += 1
                self._spawn(f"retry {self.failures} of {self.spec.startretries}")
        elif state == State.STOPPING:
            if code is not None:
                self.last_exit = code
                self._go(State.STOPPED, f"exited with status {code}")
            elif not self._killed and now - self._stop_sent >= self.spec.stop_timeout:
                self._signal(signal.SIGKILL)
                self._killed = True
                log.warning(
                    "%s: still running %gs after %s: sent SIGKILL",
                    self.spec.name,
                    self.spec.stop_timeout,
                    self.spec.stop_signal.name,
                )
        return self.state

    # -- internals ---------------------------------------------------------------------------

    def _spawn(self, reason: str) -> None:
        self._killed = False
        out = open(self.spec.log_file, "ab") if self.spec.log_file else None  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                list(self.spec.argv),
                env=dict(self.spec.env) if self.spec.env is not None else None,
                user=self.spec.user,
                start_new_session=True,  # signals to the sidecar's group, never the agent's
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        finally:
            if out is not None:
                out.close()
        self.proc = proc
        if self.on_spawn is not None:
            self.on_spawn(proc.pid)
        self._go(State.STARTING, f"{reason}: pid {proc.pid}")

    def _failed_start(self, code: int) -> None:
        self.last_exit = code
        self.failures += 1
        if self.failures > self.spec.startretries:
            retries = self.spec.startretries
            self._go(
                State.FATAL, f"exited with status {code} during start; {retries} retries spent"
            )
        else:
            self._schedule_restart(f"exited with status {code} during start")

    def _schedule_restart(self, reason: str) -> None:
        delay = min(self.spec.backoff_max, self.spec.backoff_base * 2 ** max(0, self.failures - 1))
        self._next_start = self.clock() + delay
        self._go(State.BACKOFF, f"{reason}; restart in {delay:g}s")

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def _go(self, new: State, reason: str) -> None:
        old, self.state, self._since = self.state, new, self.clock()
        log.info("%s: %s -> %s (%s)", self.spec.name, old.value, new.value, reason)
        if self.listener is not None:
            self.listener(old, new, reason)
