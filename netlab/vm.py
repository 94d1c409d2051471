"""One lab "VM": a network namespace with `lo` and `eth0` on the lab bridge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from netlab.errors import LabCommandError, LabError
from netlab.netns import netns_path
from netlab.probe import EXIT_FAILED
from netlab.procs import ProcessTracker
from netlab.runner import run_cmd
from netlab.wait import wait_until

IPV4_PREFIX = "198.51.100."
IPV6_PREFIX = "2001:db8::"
PROBE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe.py")

_Stream = int | IO[Any] | None


class VM:
    """A network namespace that behaves like a small VM on the lab bridge."""

    def __init__(
        self, *, name: str, index: int, netns: str, ipv6: bool, tracker: ProcessTracker
    ) -> None:
        self.name = name
        self.index = index
        """Host part of both addresses: 198.51.100.<index> and 2001:db8::<index>."""
        self.netns = netns
        self.netns_path = netns_path(netns)
        self.ipv4 = f"{IPV4_PREFIX}{index}"
        self.ipv6: str | None = f"{IPV6_PREFIX}{index}" if ipv6 else None
        self._tracker = tracker
        self.cgroup: str | None = None
        """A cgroup v2 directory every command of this VM joins (run and spawn), so that
        cgroup BPF hooks see exactly this VM's processes; None: stay where the lab is."""

    def __repr__(self) -> str:
        return f"VM(name={self.name!r}, netns={self.netns!r}, ipv4={self.ipv4!r})"

    def argv(
        self, cmd: Sequence[str], *, user: int | None = None, group: int | None = None
    ) -> list[str]:
        """`cmd` wrapped to run in this VM's network namespace (and only that namespace).

        Not `ip netns exec`: that also unshares the mount namespace and remounts /sys,
        which hides the host's cgroup2 and bpffs. `user`/`group` are applied by nsenter
        after entering, because an unprivileged process could not enter at all.
        """
        argv = ["nsenter", f"--net={self.netns_path}"]
        if user is not None:
            argv.append(f"--setuid={user}")
        if user is not None or group is not None:
            argv.append(f"--setgid={group if group is not None else user}")
        return [*argv, "--", *cmd]

    def probe_argv(self, args: Sequence[str]) -> list[str]:
        """Command line of `netlab.probe` (not yet wrapped by `argv`).

        The probe is run by file path with -P (nothing prepended to sys.path): it needs
        only the standard library, so it works from any directory, as any user, whether
        or not this package is importable there.
        """
        return [sys.executable, "-P", PROBE_FILE, *args]

    def run(
        self,
        cmd: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30.0,
        user: int | None = None,
        group: int | None = None,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` inside the VM and wait; raise LabCommandError on failure if `check`."""
        self._require_running()
        argv = self.argv(cmd, user=user, group=group)
        if self.cgroup is not None:
            # Join first (as root, before nsenter drops to `user`); membership survives exec.
            join = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
            argv = ["sh", "-c", join, self.cgroup, *argv]
        return run_cmd(
            argv,
            check=check,
            timeout=timeout,
            env=env,
            input=input,
            netns=self.netns,
        )

    def spawn(
        self,
        cmd: Sequence[str],
        *,
        user: int | None = None,
        group: int | None = None,
        env: Mapping[str, str] | None = None,
        stdin: _Stream = subprocess.DEVNULL,
        stdout: _Stream = subprocess.PIPE,
        stderr: _Stream = subprocess.PIPE,
        cgroup: str | None = None,
    ) -> subprocess.Popen[str]:
        """Start `cmd` inside the VM in its own process group; the lab kills it at teardown.

        `cgroup` is a cgroup v2 directory the child joins before exec (as root, before
        nsenter drops to `user`), so even its first syscall runs inside that cgroup.
        Output goes to pipes by default: read them (or `stop()` the process, which
        returns them), or pass DEVNULL for a chatty long-lived process, whose writes
        would otherwise block once a pipe is full.
        """
        self._require_running()
        argv = self.argv(cmd, user=user, group=group)
        cgroup = cgroup if cgroup is not None else self.cgroup
        join: Callable[[], None] | None = None
        if cgroup is not None:
            procs = os.path.join(cgroup, "cgroup.procs")
            if not os.path.isfile(procs):
                raise LabError(f"not a cgroup v2 directory: {cgroup}", cmd=argv, netns=self.netns)
            join = _cgroup_joiner(procs)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                text=True,
                env=dict(env) if env is not None else None,
                start_new_session=True,
                preexec_fn=join,  # noqa: PLW1509 - only writes our pid to a file
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise LabError(f"cannot start command: {exc}", cmd=argv, netns=self.netns) from exc
        self._tracker.add(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str], *, timeout: float = 5.0) -> tuple[str, str]:
        """SIGTERM a spawned process group, SIGKILL after `timeout`; return (stdout, stderr)."""
        return self._tracker.stop(proc, timeout=timeout)

    def listening(self, port: int, *, host: str | None = "127.0.0.1") -> bool:
        """Whether a TCP socket in this VM listens on `port` and accepts connects to `host`.

        Looks at the listening sockets (`ss`) instead of connecting, so that a probe
        listener does not count a connection that no test made. `host=None`: any address.
        """
        done = self.run(["ss", "-Hltn", "sport", "=", f":{port}"], timeout=10.0)
        for line in done.stdout.splitlines():
            fields = line.split()
            if len(fields) >= 4 and _accepts(fields[3], host):
                return True
        return False

    def wait_for_port(
        self,
        port: int,
        *,
        host: str | None = "127.0.0.1",
        deadline: float = 10.0,
        process: subprocess.Popen[str] | None = None,
    ) -> None:
        """Wait until `listening(port, host=host)`; fail at once if `process` exits first."""

        def ready() -> bool:
            if process is not None and process.poll() is not None:
                raise LabError(
                    f"{self.name}: process exited with status {process.returncode} "
                    f"before TCP port {port} was listening",
                    cmd=process.args if isinstance(process.args, list) else None,
                    netns=self.netns,
                    returncode=process.returncode,
                    stderr=_drain(process),
                )
            return self.listening(port, host=host)

        where = f" on {host}" if host is not None else ""
        wait_until(
            ready, deadline=deadline, what=f"vm {self.name}: TCP port {port} listening{where}"
        )

    def probe_connect(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 5.0,
        source: str | None = None,
        send: str | None = None,
        user: int | None = None,
    ) -> dict[str, Any]:
        """Connect from this VM with `netlab.probe connect`; return the JSON it printed.

        A failed connection is data, not an exception: the result is {"error": ...}.
        An answer that is not a JSON object comes back as {"raw": text}.
        """
        args = ["connect", host, str(port), "--timeout", str(timeout)]
        if source is not None:
            args += ["--source", source]
        if send is not None:
            args += ["--send", send]
        done = self.run(self.probe_argv(args), check=False, timeout=timeout + 10.0, user=user)
        if done.returncode not in (0, EXIT_FAILED):
            raise LabCommandError(
                "probe connect failed",
                cmd=done.args,
                netns=self.netns,
                returncode=done.returncode,
                stderr=done.stderr,
            )
        text = done.stdout.strip()
        if not text:
            raise LabCommandError(
                "probe connect printed nothing",
                cmd=done.args,
                netns=self.netns,
                returncode=done.returncode,
                stderr=done.stderr,
            )
        try:
            result = json.loads(text.splitlines()[0])
        except ValueError:
            result = None
        # Something other than a probe answered (a proxy's error page, say): show it raw.
        return result if isinstance(result, dict) else {"raw": text}

    def _require_running(self) -> None:
        if not os.path.exists(self.netns_path):
            raise LabError(f"vm {self.name} is not running (lab not started or torn down)")


def _accepts(local: str, host: str | None) -> bool:
    """Whether a listener bound to `local` ("addr:port" as ss prints it) accepts `host`."""
    addr = local.rsplit(":", 1)[0].split("%", 1)[0].strip("[]")
    if host is None or addr in (host, "*"):  # "*": an IPv6 wildcard that also takes IPv4
        return True
    return addr == ("::" if ":" in host else "0.0.0.0")


def _drain(process: subprocess.Popen[str]) -> str | None:
    try:
        _, err = process.communicate(timeout=2.0)
    except subprocess.TimeoutExpired:
        return None
    return err


def _cgroup_joiner(procs_file: str) -> Callable[[], None]:
    def join() -> None:
        # Runs in the child between fork and exec: keep it to plain system calls.
        fd = os.open(procs_file, os.O_WRONLY)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)

    return join
