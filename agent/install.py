"""`sofamesh install / uninstall / reinstall` (R-AG-1, R-AG-2, R-CLI-3, R-CLI-4, R-AG-8).

install: validate → authenticate (the key's tenant/workspace/instance must be the ones
given) → register the node and fetch its config → check the backend can run → create the
proxy user → save settings, secret (0600) and the config → start the agent → wait until
the agent has the sidecar healthy and the rules applied (it reports that in its status
file) → done. Nothing changes on the node before the backend check; any failure after it
undoes every step (rollback = uninstall of what was created) and says what to do.

uninstall: stop the agent first (otherwise it would put back what we remove; a stopped
agent leaves the sidecar and the rules untouched, so traffic is unaffected), then the node
is switched off through the same reconcile step the agent uses: park the rules, drain and
stop the sidecar, remove the parked rule; then the user, the unit and the files.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent import keeper, procs, settings
from agent.console_client import (
    ConsoleAuthError,
    ConsoleClient,
    ConsoleRejected,
    ConsoleUnreachable,
    Credentials,
)
from agent.daemon import node_ip
from agent.errors import (
    AgentError,
    BadInput,
    ConsoleFailure,
    InstallFailed,
    NotInstalled,
    NotRegistered,
)
from agent.paths import Paths, read_json, write_json_atomic
from agent.runtime import NodeRuntime
from agent.settings import NodeSettings
from hijack import engine
from hijack.command import SubprocessRunner
from hijack.detect import choose

Say = Callable[[str], None]
CONVERGE_TIMEOUT = 60.0
LOCK_WAIT = 120.0


@dataclass(frozen=True)
class Outcome:
    changed: bool
    message: str


class Steps:
    """Numbered progress lines; -v adds the detail lines (R-CLI-7)."""

    def __init__(self, say: Say, verbose: bool) -> None:
        self.say, self.verbose, self.n = say, verbose, 0

    def step(self, text: str) -> None:
        self.n += 1
        self.say(f"[{self.n}] {text}")

    def detail(self, text: str) -> None:
        if self.verbose:
            self.say(f"    {text}")


# -- install ---------------------------------------------------------------------------------


def install(paths: Paths, wanted: NodeSettings, secret: str, say: Say, verbose: bool) -> Outcome:
    wanted.validate()
    steps = Steps(say, verbose)
    run_dir_existed = paths.run_dir.exists()
    try:
        with procs.locked(paths.install_lock, "install", LOCK_WAIT):
            existing = settings.load(paths)
            if existing is not None:
                return _already_installed(paths, existing, wanted, secret, steps)
            return _fresh_install(paths, wanted, secret, steps)
    finally:
        if not paths.settings.exists():  # nothing installed: not even the lock file stays
            paths.install_lock.unlink(missing_ok=True)
            if not run_dir_existed:
                with contextlib.suppress(OSError):
                    paths.run_dir.rmdir()


def _fresh_install(paths: Paths, wanted: NodeSettings, secret: str, steps: Steps) -> Outcome:
    say = steps.say
    steps.step(f"checking the access key with the console at {wanted.console}")
    ip, config_version = _check_console(wanted, secret, steps)
    steps.step("checking the interception backend")
    # BackendUnavailable: exit 5, before anything changed.
    choice = choose(wanted.backend, SubprocessRunner(), wanted.ebpf_options(paths.root))
    steps.detail(f"backend {choice.backend.name}: {choice.reason}")
    record: dict[str, Any] = {
        "created_user": False,
        "created_dirs": [],
        "service": None,
        "backend": choice.backend.name,
    }
    try:
        _install_changes(
            paths,
            wanted=wanted,
            secret=secret,
            record=record,
            steps=steps,
        )
    except BaseException as exc:
        reason = str(exc) or type(exc).__name__
        say(f"install failed: {reason}; rolling back")
        _teardown(paths, record, steps, keep_logs=True)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise InstallFailed(
            f"{reason}. Everything install changed was undone (the logs are kept in "
            f"{paths.log_dir}); fix the cause and run install again"
        ) from None
    state = read_json(paths.agent_status) or {}
    on = "on" if state.get("enabled") else "off (switched off in the console)"
    return Outcome(
        True,
        f"installed: app {wanted.app}, node {ip}, backend {choice.backend.name}, "
        f"config version {config_version}, interception {on}",
    )


def _already_installed(
    paths: Paths, existing: NodeSettings, wanted: NodeSettings, secret: str, steps: Steps
) -> Outcome:
    if not existing.same_install(wanted):
        differ = [
            name
            for name in (
                "tenant",
                "workspace",
                "instance_id",
                "app",
                "access_key",
                "console",
                "backend",
                "ip",
                "proxy_user",
                "cgroup",
            )
            if getattr(existing, name) != getattr(wanted, name)
        ]
        raise BadInput(
            "install",
            f"this node is installed with a different {', '.join(differ)}: run "
            "`sofamesh uninstall` first (or `reinstall` to reuse the saved parameters)",
        )
    if settings.read_secret(paths) != secret:
        _check_console(wanted, secret, steps)  # a wrong new secret is refused, not saved
        settings.write_secret(paths.secret, secret)
        steps.detail("the secret key changed: saved the new one")
        _restart_agent(paths)
    elif procs.read_pid(paths.agent_pid) is None and procs.read_pid(paths.keeper_pid) is None:
        steps.step("the agent was not running: starting it")
        _start_service(paths, read_json(paths.install_record) or {}, steps)
    else:
        return Outcome(False, "already installed with these parameters: nothing to do")
    _wait_converged(paths, steps)
    return Outcome(True, "already installed; the agent is running again")


def _check_console(wanted: NodeSettings, secret: str, steps: Steps) -> tuple[str, int]:
    client = ConsoleClient(wanted.console, Credentials(wanted.access_key, secret), timeout=5)
    try:
        with client:
            scope = client.whoami()
            for option, given, actual in (
                ("--tenant", wanted.tenant, scope.tenant),
                ("--workspace", wanted.workspace, scope.workspace),
                ("--instanceid", wanted.instance_id, scope.instance_id),
            ):
                if given != actual:
                    raise NotRegistered(
                        f"{option}: the access key belongs to {actual!r}, not {given!r}"
                    )
            steps.detail(
                f"key {scope.key_id}: {scope.tenant}/{scope.workspace}/{scope.instance_id}"
            )
            ip = wanted.ip or node_ip(wanted.console_host, wanted.console_port)
            steps.step(f"registering node {ip} of app {wanted.app}")
            registration = client.register(wanted.app, ip, socket.gethostname())
            config = client.config(wanted.app, ip)
            steps.detail(
                f"node id {registration.node_id}; config version "
                f"{config.version if config else '?'}, "
                f"hijack {'on' if config and config.hijack_enabled else 'off'}"
            )
            return ip, config.version if config else registration.config_version
    except ConsoleAuthError as exc:
        raise ConsoleFailure(f"--secretkey/--accesskey: {exc}") from None
    except ConsoleUnreachable as exc:
        raise ConsoleFailure(f"--console: cannot reach {wanted.console}: {exc}") from None
    except ConsoleRejected as exc:
        if exc.status == 404:
            fields = exc.fields
            if "body.ip" in fields or "query.ip" in fields:
                raise NotRegistered(
                    "--ip: this node's address is not a node of app "
                    f"{wanted.app!r} in the console: add it there (or pass --ip)"
                ) from None
            raise NotRegistered(
                f"--appname: the console has no app {wanted.app!r} in "
                f"{wanted.tenant}/{wanted.workspace}/{wanted.instance_id}"
            ) from None
        raise ConsoleFailure(f"console refused the request: {exc}") from None


def _install_changes(
    paths: Paths,
    *,
    wanted: NodeSettings,
    secret: str,
    record: dict[str, Any],
    steps: Steps,
) -> None:
    for directory in (paths.etc_dir, paths.state_dir, paths.run_dir, paths.log_dir):
        _make_dir(directory, record)
    if record["backend"] == "ebpf":
        # The backend mounts a bpffs there when none is; uninstall unmounts only what we
        # mounted and removes only the directories we made.
        bpffs = wanted.ebpf_options(paths.root).bpffs
        record["bpffs"] = str(bpffs)
        record["bpffs_mounted_before"] = _is_bpf_mount(bpffs)
        _make_dir(bpffs, record)
    write_json_atomic(paths.install_record, record)
    steps.step(f"creating the proxy user {wanted.proxy_user}")
    record["created_user"] = _ensure_user(wanted.proxy_user, steps)
    write_json_atomic(paths.install_record, record)
    steps.step("saving the settings and the secret key (0600)")
    # The backend as asked (so a re-run with the same options matches) plus the one chosen
    # (so the agent never switches variants after a restart).
    saved = replace(wanted, extra={**wanted.extra, "resolved_backend": record["backend"]})
    settings.save(paths, saved, secret)
    steps.step(
        "starting the agent, which starts the sidecar, waits until it is healthy "
        "and then applies the rules"
    )
    _start_service(paths, record, steps)
    write_json_atomic(paths.install_record, record)
    _wait_converged(paths, steps)


def _is_bpf_mount(path: Path) -> bool:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "bpf" and Path(fields[1]) == path:
            return True
    return False


def _unmount_bpffs(record: dict[str, Any]) -> None:
    bpffs = record.get("bpffs")
    if not bpffs or record.get("bpffs_mounted_before", True) or not _is_bpf_mount(Path(bpffs)):
        return
    # The kernel's own iterators (maps.debug, progs.debug) appear in every bpffs.
    if any(not entry.name.endswith(".debug") for entry in Path(bpffs).iterdir()):
        return  # someone else pinned something there since: leave it mounted
    subprocess.run(["umount", bpffs], capture_output=True, check=False)


def _make_dir(directory: Path, record: dict[str, Any]) -> None:
    """Create directory and missing parents, remembering each one created (for removal)."""
    missing = []
    probe = directory
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        path.mkdir(mode=0o755)
        record["created_dirs"].append(str(path))


def _ensure_user(name: str, steps: Steps) -> bool:
    try:
        pwd.getpwnam(name)
        steps.detail(f"user {name} exists: using it (it will be kept at uninstall)")
        return False
    except KeyError:
        pass
    argv = [
        "useradd",
        "--system",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        "--comment",
        "sofamesh sidecar",
        name,
    ]
    steps.detail("$ " + " ".join(argv))
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AgentError(f"useradd {name}: {done.stderr.strip()}")
    return True


def _start_service(paths: Paths, record: dict[str, Any], steps: Steps) -> None:
    if keeper.systemd_running():
        from agent.service import install_unit  # noqa: PLC0415

        install_unit(paths, steps.detail)
        record["service"] = "systemd"
    else:
        pid = keeper.start_keeper(paths)
        steps.detail(f"no systemd here: agent keeper started (pid {pid}, {paths.keeper_pid})")
        record["service"] = "keeper"


def _restart_agent(paths: Paths) -> None:
    """So the agent reads the new secret (it reads it once, at start)."""
    record = read_json(paths.install_record) or {}
    if record.get("service") == "systemd":
        subprocess.run(["systemctl", "restart", keeper.UNIT_NAME], check=False)
        return
    keeper.stop_keeper(paths)
    keeper.start_keeper(paths)


def _wait_converged(paths: Paths, steps: Steps) -> None:
    """Until the agent says the node is as the console wants it; its errors end the wait."""
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    started = time.time()
    last = ""
    while time.monotonic() < deadline:
        state = read_json(paths.agent_status)
        if isinstance(state, dict) and state.get("updated", 0) >= started:
            if state.get("startup_error"):
                raise AgentError(f"the agent cannot start: {state['startup_error']}")
            sidecar = state.get("sidecar", {})
            line = f"sidecar {sidecar.get('status')} ({sidecar.get('health')}); rules " + (
                "applied" if state.get("rules", {}).get("installed") else "not installed"
            )
            if line != last:
                steps.detail(line)
                last = line
            if state.get("converged"):
                return
            if sidecar.get("state") == "FATAL":
                raise AgentError(f"the sidecar cannot start: see {paths.sidecar_log}")
            if state.get("config", {}).get("refused"):
                raise AgentError(f"the console's config was refused: {state['config']['refused']}")
        gone = procs.read_pid(paths.keeper_pid) is None and procs.read_pid(paths.agent_pid) is None
        if gone and time.time() - started > 5:
            raise AgentError(f"the agent is not running: see {paths.agent_log}")
        time.sleep(0.2)
    state = read_json(paths.agent_status) or {}
    raise AgentError(
        f"the node did not converge within {CONVERGE_TIMEOUT:g}s "
        f"(last status: {json.dumps(state.get('sidecar'))}, error: {state.get('error')})"
    )


# -- uninstall -------------------------------------------------------------------------------


def uninstall(paths: Paths, say: Say, verbose: bool) -> Outcome:
    steps = Steps(say, verbose)
    with procs.locked(paths.install_lock, "uninstall", LOCK_WAIT):
        record = read_json(paths.install_record)
        if record is None and settings.load(paths) is None:
            leftovers = engine.remove("auto")
            if leftovers:
                return Outcome(True, f"not installed; removed leftover rules from {leftovers}")
            return Outcome(False, "not installed: nothing to remove")
        _teardown(paths, record or {}, steps)
    return Outcome(True, "uninstalled: rules, sidecar, agent, user and files removed")


def _teardown(
    paths: Paths, record: dict[str, Any], steps: Steps, *, keep_logs: bool = False
) -> None:
    """Undo install in the safe order; every step runs even if an earlier one failed."""
    problems: list[str] = []

    def attempt(what: str, action: Callable[[], object]) -> None:
        steps.step(what)
        try:
            action()
        except Exception as exc:
            problems.append(f"{what}: {exc}")
            steps.say(f"    failed: {exc}")

    if record.get("service") == "systemd":
        from agent.service import remove_unit  # noqa: PLC0415

        attempt("stopping the agent (systemd unit)", lambda: remove_unit(paths, steps.detail))
    attempt("stopping the agent", lambda: keeper.stop_keeper(paths))
    attempt("removing the rules and draining the sidecar", lambda: _switch_off(paths, steps))
    if record.get("created_user"):
        saved = settings.load(paths) if paths.settings.exists() else None
        user = saved.proxy_user if saved else None
        if user:
            attempt(f"removing the proxy user {user}", lambda: _remove_user(user, steps))
    attempt("unmounting the bpffs install mounted", lambda: _unmount_bpffs(record))
    attempt("removing the files", lambda: _remove_files(paths, record, keep_logs))
    if problems:
        raise AgentError("uninstall incomplete: " + "; ".join(problems))


def _switch_off(paths: Paths, steps: Steps) -> None:
    saved = settings.load(paths) if paths.settings.exists() else None
    backend = saved.effective_backend if saved else "auto"
    options = saved.ebpf_options(paths.root) if saved else None
    try:
        runtime = (
            NodeRuntime(
                paths,
                choose(backend, SubprocessRunner(), options).backend,
                saved.proxy_user,
                options,
            )
            if saved
            else None
        )
    except KeyError:  # the proxy user is gone: nothing of ours can run as it
        runtime = None
    if runtime is None:
        removed = engine.remove("auto", options=options)
        steps.detail(f"rules removed from {removed}" if removed else "no rules installed")
        return
    for action in runtime.step(None):
        steps.detail(action.value)
    pid = procs.read_pid(paths.sidecar_pid)
    if pid is not None:  # a sidecar the supervisor did not see (e.g. mid-restart)
        procs.stop_process(pid, 30)


def _remove_user(name: str, steps: Steps) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return
    argv = ["userdel", name]
    steps.detail("$ " + " ".join(argv))
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AgentError(f"userdel {name}: {done.stderr.strip()}")


def _remove_files(paths: Paths, record: dict[str, Any], keep_logs: bool = False) -> None:
    for directory in (paths.etc_dir, paths.state_dir, paths.run_dir, paths.log_dir):
        if not (keep_logs and directory == paths.log_dir):
            shutil.rmtree(directory, ignore_errors=True)
    for created in sorted(record.get("created_dirs", []), key=len, reverse=True):
        with contextlib.suppress(OSError):  # not empty (someone else's files) or gone
            os.rmdir(created)


def reinstall(paths: Paths, say: Say, verbose: bool) -> Outcome:
    saved = settings.load(paths)
    if saved is None:
        raise NotInstalled("reinstall: nothing is installed here: use `sofamesh install`")
    secret = settings.read_secret(paths)
    uninstall(paths, say, verbose)
    return install(paths, saved, secret, say, verbose)
