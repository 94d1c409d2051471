"""Running the agent as a service (R-AG-3): a systemd unit where systemd is PID 1, and where
it is not (containers, this machine's namespace VMs), a small keeper with a pid file that
does what the unit's Restart=always does.

The keeper restarts the agent when it dies (backoff 1 s doubling to 30 s, reset after a
minute up) and is the subreaper of the agent's descendants, so a sidecar whose agent was
killed is reaped here rather than lingering as a zombie. SIGTERM to the keeper stops the
agent (which leaves the sidecar and the rules as they are) and then the keeper.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from agent import procs
from agent.errors import AgentError
from agent.paths import Paths

log = logging.getLogger("sofamesh.keeper")
PR_SET_CHILD_SUBREAPER = 36
UNIT_NAME = "sofamesh-agent.service"


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


def agent_argv(paths: Paths) -> list[str]:
    return [sys.executable, "-m", "agent", "--root", str(paths.root), "agent", "run"]


def child_env() -> dict[str, str]:
    """The service's environment: nothing of the installer's (no secret variable)."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    return env


def start_keeper(paths: Paths) -> int:
    """Start the keeper detached (own session, stdio to the log) and return its pid."""
    paths.log_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    argv = [sys.executable, "-m", "agent", "--root", str(paths.root), "agent", "keep"]
    with open(paths.log_dir / "keeper.log", "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            env=child_env(),
            cwd="/",
        )
    return proc.pid


def stop_keeper(paths: Paths, timeout: float = 30.0) -> bool:
    """Stop keeper and agent; True if one was running."""
    stopped = False
    pid = procs.read_pid(paths.keeper_pid)
    if pid is not None:
        procs.stop_process(pid, timeout)
        stopped = True
    agent = procs.read_pid(paths.agent_pid)
    if agent is not None:  # an agent without its keeper (the keeper was killed)
        os.kill(agent, signal.SIGTERM)
        handle = procs.Adopted.open(agent)
        if handle is not None and handle.wait(timeout) is None:
            os.kill(agent, signal.SIGKILL)
        stopped = True
    paths.keeper_pid.unlink(missing_ok=True)
    return stopped


def run_keeper(paths: Paths) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s keeper: %(message)s")
    if procs.read_pid(paths.keeper_pid) not in (None, os.getpid()):
        raise AgentError(f"a keeper already runs (pid file {paths.keeper_pid})")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    procs.write_pid(paths.keeper_pid, os.getpid())
    stopping = False
    agent: subprocess.Popen[bytes] | None = None

    def terminate(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    delay = 1.0
    try:
        while not stopping:
            started = time.monotonic()
            agent = subprocess.Popen(agent_argv(paths), env=child_env(), cwd="/")
            log.info("agent started: pid %d", agent.pid)
            code = _wait_for(agent.pid)
            if stopping:  # set by the signal handler while we waited
                break  # type: ignore[unreachable]
            up = time.monotonic() - started
            delay = 1.0 if up > 60 else min(30.0, delay * 2)
            log.warning("agent exited with status %s after %.1fs; restart in %gs", code, up, delay)
            deadline = time.monotonic() + delay
            while not stopping and time.monotonic() < deadline:
                _reap_orphans()
                time.sleep(0.1)
    finally:
        paths.keeper_pid.unlink(missing_ok=True)
        log.info("keeper stopped")


def _wait_for(pid: int) -> int:
    """Wait for the agent; reap any adopted orphan (e.g. a sidecar) on the way."""
    while True:
        try:
            got, status = os.wait()
        except ChildProcessError:
            return -1
        if got == pid:
            return os.waitstatus_to_exitcode(status)


def _reap_orphans() -> None:
    while True:
        try:
            got, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if got == 0:
            return
