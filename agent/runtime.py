"""The node as the agent drives it: the supervised sidecar, its health, and the rules.

observe() reads what is (supervisor state, debounced health, the running sidecar's config
digest, the installed rules), reconcile.decide() names the steps, execute() carries them
out. The daemon runs that in a loop; uninstall and install's rollback run it once with
the node switched off. One code path for all of them (DESIGN.md §2).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import pwd
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import procs
from agent.desired import NodeDesired
from agent.health import Health, HealthSpec
from agent.paths import Paths, write_json_atomic
from agent.reconcile import Action, Desired, Observed, decide
from agent.supervisor import ProgramSpec, State, Supervisor
from hijack import engine
from hijack.backends.base import PARK_COMMENT, Backend
from hijack.backends.ebpf import EbpfOptions
from hijack.errors import HijackError

log = logging.getLogger("sofamesh.agent")

# The sidecar is the first process the OOM killer picks, before the app (R-AG-9).
SIDECAR_OOM_SCORE_ADJ = 1000


@dataclass(frozen=True)
class RulesSeen:
    digest: str | None  # None: no rules (or only the parked one)
    parked: bool


def rules_seen(backend: Backend) -> RulesSeen:
    installed = backend.inspect()
    comments = [c for _, chain in installed.view.chains for c in chain]
    if not comments and not installed.view.sets:
        return RulesSeen(None, False)
    if comments and all(c == PARK_COMMENT for c in comments):
        return RulesSeen(None, True)
    return RulesSeen(installed.digest, False)


def admin_call(port: int, method: str, path: str, timeout: float = 2.0) -> Any:
    """One request to the sidecar's admin API on loopback; its JSON answer, or OSError."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None)
        answer = conn.getresponse()
        body = answer.read()
        if answer.status != 200:
            raise OSError(f"{method} {path} answered {answer.status}: {body[:200]!r}")
        return json.loads(body)
    except (http.client.HTTPException, ValueError) as exc:
        raise OSError(f"{method} {path}: {exc}") from exc
    finally:
        conn.close()


def admin_get(port: int, path: str) -> Any:
    return admin_call(port, "GET", path)


def admin_post(port: int, path: str) -> Any:
    return admin_call(port, "POST", path, timeout=5.0)


def sidecar_spec(paths: Paths, uid: int) -> ProgramSpec:
    return ProgramSpec(
        name="sidecar",
        # The lean entry point: the proxy does not carry the CLI's modules (and no secret:
        # the sidecar needs none).
        argv=[sys.executable, "-m", "sidecar", "--config", str(paths.sidecar_config)],
        env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C.UTF-8"},
        user=uid,
        log_file=paths.sidecar_log,
    )


@dataclass
class NodeRuntime:
    paths: Paths
    backend: Backend
    proxy_user: str
    options: EbpfOptions | None = None
    health_spec: HealthSpec = field(default_factory=HealthSpec)
    clock: Callable[[], float] = time.monotonic
    on_change: Callable[[], None] | None = None  # the reporter posts status on changes
    supervisor: Supervisor = field(init=False)
    health: Health = field(init=False)
    running_digest: str | None = None
    written_digest: str | None = None
    rules: RulesSeen = field(default_factory=lambda: RulesSeen(None, False))
    last_error: str | None = None
    last_probe: float = -1e9
    last_rules_check: float = -1e9

    def __post_init__(self) -> None:
        uid = pwd.getpwnam(self.proxy_user).pw_uid
        self.supervisor = Supervisor(
            sidecar_spec(self.paths, uid),
            clock=self.clock,
            listener=self._transition,
            on_spawn=self._spawned,
        )
        self.health = Health(self.health_spec)
        self.written_digest = self._digest_on_disk()
        pid = procs.read_pid(self.paths.sidecar_pid)
        handle = procs.Adopted.open(pid) if pid is not None else None
        if handle is not None:
            self.supervisor.adopt(handle)

    # -- observing -------------------------------------------------------------------------

    def observe(self, force_rules: bool = False) -> Observed:
        now = self.clock()
        state = self.supervisor.tick()
        running = state in (State.STARTING, State.RUNNING)
        # Probe often until healthy (install waits on it), then at the configured interval.
        interval = self.health_spec.interval if self.health.healthy else 0.5
        if running and now - self.last_probe >= interval:
            self.last_probe = now
            was = self.health.healthy
            self.health.observe()
            if self.health.healthy:
                self._read_running_digest()
            if was != self.health.healthy:
                log.info("sidecar health: %s (%s)", self.health.healthy, self.health.reason)
                self._changed()
        if force_rules or now - self.last_rules_check >= 2.0:
            self.refresh_rules()
        return Observed(
            sidecar_running=running,
            sidecar_healthy=running and self.health.healthy,
            sidecar_failed=state in (State.BACKOFF, State.FATAL),
            sidecar_digest=self.running_digest if running else None,
            written_sidecar_digest=self.written_digest,
            rules_digest=self.rules.digest,
            parked=self.rules.parked,
        )

    def refresh_rules(self) -> None:
        self.last_rules_check = self.clock()
        before = self.rules
        self.rules = rules_seen(self.backend)
        if before != self.rules:
            self._changed()

    # -- acting ----------------------------------------------------------------------------

    def step(self, desired: NodeDesired | None, *, enabled: bool | None = None) -> list[Action]:
        """Observe, decide, execute once. desired None (no config yet): only switch off."""
        seen = self.observe()
        if desired is None:
            want = Desired(False, "", "")
        else:
            on = desired.enabled if enabled is None else enabled
            want = Desired(on, desired.rules_digest, desired.sidecar_digest)
        actions = decide(want, seen)
        for action in actions:
            self.execute(action, desired)
        return actions

    def execute(self, action: Action, desired: NodeDesired | None) -> None:
        log.info("reconcile: %s", action.value)
        try:
            self._execute(action, desired)
        except (HijackError, OSError) as exc:
            self.last_error = f"{action.value}: {exc}"
            log.error("reconcile: %s failed: %s", action.value, exc)
        else:
            self.last_error = None
        self._changed()

    def _execute(self, action: Action, desired: NodeDesired | None) -> None:
        if action == Action.WRITE_SIDECAR_CONFIG:
            assert desired is not None
            write_json_atomic(self.paths.sidecar_config, desired.sidecar.to_document(), 0o644)
            self.written_digest = desired.sidecar_digest
        elif action == Action.START_SIDECAR:
            self.health = Health(self.health_spec)
            self.running_digest = None
            self._prepare_sidecar_dirs()
            self.supervisor.start()
        elif action == Action.RELOAD_SIDECAR:
            answer = admin_post(self.health_spec.admin_port, "/reload")
            self.running_digest = str(answer.get("digest"))
        elif action == Action.APPLY_RULES:
            assert desired is not None
            engine.apply(desired.hijack, self.backend.name, options=self.options)
            self.refresh_rules()
        elif action == Action.REMOVE_RULES:
            engine.remove(self.backend.name, options=self.options)
            self.refresh_rules()
        elif action == Action.PARK_RULES:
            engine.remove(self.backend.name, park=True, options=self.options)
            self.refresh_rules()
        elif action == Action.STOP_SIDECAR:
            self.stop_sidecar()
        elif action == Action.FINISH_REMOVAL:
            engine.remove(self.backend.name, options=self.options)
            self.refresh_rules()

    def stop_sidecar(self) -> None:
        """Drain and stop: SIGTERM, wait for the exit (the sidecar's drain timeout), then
        SIGKILL. Blocks; nothing else needs the loop while the node switches off."""
        self.supervisor.stop()
        deadline = self.clock() + self.supervisor.spec.stop_timeout + 10
        while self.supervisor.tick() == State.STOPPING and self.clock() < deadline:
            time.sleep(0.05)
        self.paths.sidecar_pid.unlink(missing_ok=True)
        self.running_digest = None

    # -- internals -------------------------------------------------------------------------

    def _prepare_sidecar_dirs(self) -> None:
        entry = pwd.getpwnam(self.proxy_user)
        state = self.paths.sidecar_state_dir
        state.mkdir(parents=True, exist_ok=True)
        os.chown(state, entry.pw_uid, entry.pw_gid)
        os.chmod(state, 0o700)
        self.paths.log_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.paths.run_dir.mkdir(parents=True, exist_ok=True)
        # The proxy user reaches its state dir through these.
        for parent in (self.paths.state_dir, self.paths.etc_dir):
            os.chmod(parent, 0o755)  # noqa: S103  (directories, no secrets listed by name)

    def _spawned(self, pid: int) -> None:
        procs.write_pid(self.paths.sidecar_pid, pid)
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/oom_score_adj").write_text(str(SIDECAR_OOM_SCORE_ADJ))

    def _transition(self, old: State, new: State, reason: str) -> None:
        if new in (State.BACKOFF, State.FATAL, State.STOPPED, State.EXITED):
            self.health = Health(self.health_spec)
            self.running_digest = None
        self._changed()

    def _read_running_digest(self) -> None:
        try:
            self.running_digest = str(admin_get(self.health_spec.admin_port, "/config")["digest"])
        except (OSError, KeyError, TypeError) as exc:
            log.warning("sidecar GET /config: %s", exc)

    def _digest_on_disk(self) -> str | None:
        from sidecar.config import load_sidecar_config  # noqa: PLC0415
        from sidecar.errors import SidecarConfigError  # noqa: PLC0415

        if not self.paths.sidecar_config.exists():
            return None
        try:
            return load_sidecar_config(self.paths.sidecar_config).digest
        except SidecarConfigError:
            return None

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- reporting -------------------------------------------------------------------------

    def sidecar_status(self, enabled: bool | None) -> tuple[str, bool]:
        """R-AG-5 status value and health."""
        state = self.supervisor.state
        healthy = state == State.RUNNING and self.health.healthy
        if state == State.RUNNING and healthy:
            return "Running", True
        if state in (State.STARTING, State.RUNNING, State.BACKOFF):
            return "Waiting", False
        if enabled is None:
            return "Unknown", False
        return "Terminated", False
