"""The sidecar supervisor's state machine, one test per transition, with real processes
and a clock the test moves (R-AG-4; STYLE: tests named test_<from>_to_<to>)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from agent.supervisor import ProgramSpec, State, Supervisor
from netlab import wait_until

pytestmark = pytest.mark.unit

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
CRASHER = [sys.executable, "-c", "raise SystemExit(3)"]
STUBBORN = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
]


_CREATED: list[Supervisor] = []


@pytest.fixture(autouse=True)
def reap() -> Iterator[None]:
    """Every program a test started is gone (and waited for) when the test ends."""
    yield
    while _CREATED:
        sup = _CREATED.pop()
        if sup.proc is not None:
            if sup.proc.poll() is None:
                sup.proc.kill()
            sup.proc.wait(timeout=10)


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def supervisor(
    argv: list[str], **spec: object
) -> tuple[Supervisor, Clock, list[tuple[State, State]]]:
    clock = Clock()
    seen: list[tuple[State, State]] = []
    sup = Supervisor(
        ProgramSpec(
            "sidecar",
            argv,
            startsecs=1.0,
            startretries=2,
            backoff_base=1.0,
            stop_timeout=5.0,
            **spec,
        ),  # type: ignore[arg-type]
        clock=clock,
        listener=lambda old, new, why: seen.append((old, new)),
    )
    _CREATED.append(sup)
    return sup, clock, seen


def exits(sup: Supervisor) -> None:
    wait_until(
        lambda: sup.proc is not None and sup.proc.poll() is not None,
        deadline=10,
        what="the program exits",
    )


def test_stopped_to_starting() -> None:
    sup, _, seen = supervisor(SLEEPER)
    sup.start()
    assert sup.state == State.STARTING and sup.pid is not None
    assert seen == [(State.STOPPED, State.STARTING)]
    sup.stop()


def test_starting_to_running_after_startsecs() -> None:
    sup, clock, _ = supervisor(SLEEPER)
    sup.start()
    clock.now += 0.5
    assert sup.tick() == State.STARTING
    clock.now += 0.6
    assert sup.tick() == State.RUNNING
    sup.stop()


def test_starting_to_backoff_when_it_dies_during_start() -> None:
    sup, _, _ = supervisor(CRASHER)
    sup.start()
    exits(sup)
    assert sup.tick() == State.BACKOFF
    assert sup.last_exit == 3


def test_backoff_to_starting_when_the_delay_is_over_with_growing_delays() -> None:
    sup, clock, _ = supervisor(CRASHER)
    sup.start()
    exits(sup)
    sup.tick()
    clock.now += 0.9
    assert sup.tick() == State.BACKOFF  # first delay: 1 s
    clock.now += 0.2
    assert sup.tick() == State.STARTING
    exits(sup)
    assert sup.tick() == State.BACKOFF
    clock.now += 1.5
    assert sup.tick() == State.BACKOFF  # second delay: 2 s
    clock.now += 0.6
    assert sup.tick() == State.STARTING


def test_backoff_to_fatal_when_start_retries_are_spent() -> None:
    sup, clock, seen = supervisor(CRASHER)
    sup.start()
    for _ in range(3):
        exits(sup)
        state = sup.tick()
        if state == State.FATAL:
            break
        clock.now += 60
        sup.tick()
    assert sup.state == State.FATAL
    assert seen[-1] == (State.STARTING, State.FATAL)
    assert sup.failures == 3


def test_running_to_backoff_on_a_crash() -> None:
    sup, clock, _ = supervisor(SLEEPER)
    sup.start()
    clock.now += 2
    assert sup.tick() == State.RUNNING
    assert sup.proc is not None
    sup.proc.kill()
    exits(sup)
    assert sup.tick() == State.BACKOFF
    assert sup.last_exit == -signal.SIGKILL


def test_running_to_stopping_to_stopped() -> None:
    sup, clock, seen = supervisor(SLEEPER)
    sup.start()
    clock.now += 2
    sup.tick()
    sup.stop()
    assert sup.state == State.STOPPING
    exits(sup)
    assert sup.tick() == State.STOPPED
    assert seen[-2:] == [(State.RUNNING, State.STOPPING), (State.STOPPING, State.STOPPED)]


def test_stopping_to_stopped_with_sigkill_after_the_stop_timeout() -> None:
    sup, clock, _ = supervisor(STUBBORN)
    sup.start()
    wait_until(lambda: _ignores_sigterm(sup), deadline=10, what="SIGTERM ignored")
    clock.now += 2
    sup.tick()
    sup.stop()
    clock.now += 4
    assert sup.tick() == State.STOPPING  # ignores SIGTERM; the timeout is not over
    assert sup.proc is not None and sup.proc.poll() is None
    clock.now += 2
    sup.tick()  # sends SIGKILL
    exits(sup)
    assert sup.tick() == State.STOPPED
    assert sup.last_exit == -signal.SIGKILL


def test_backoff_to_stopped_on_stop() -> None:
    sup, _, _ = supervisor(CRASHER)
    sup.start()
    exits(sup)
    sup.tick()
    sup.stop()
    assert sup.state == State.STOPPED


def _ignores_sigterm(sup: Supervisor) -> bool:
    """The program has installed its SIG_IGN (the SigIgn mask in /proc/PID/status)."""
    if sup.proc is None:
        return False
    try:
        with open(f"/proc/{sup.proc.pid}/status") as status:
            mask = next(int(line.split()[1], 16) for line in status if line.startswith("SigIgn:"))
    except (OSError, StopIteration):
        return False
    return bool(mask & (1 << (signal.SIGTERM - 1)))
