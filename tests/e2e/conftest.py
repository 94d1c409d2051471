"""The end-to-end lab (R-FL-3): a console VM, a server VM and a client VM that get sofamesh
installed, and an unmeshed VM. Every VM is a network namespace; each node's files live
under its own root directory; the console runs in its VM on SQLite.

The test process reaches the console's API from inside the console VM (tests/e2e/nsclient),
never through a route from the machine's own namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from netlab import VM, Cgroup, Lab, wait_until
from netlab.errors import LabTimeout
from netlab.nsclient import NetnsClient

REPO = Path(__file__).resolve().parents[2]
APPS = str(REPO / "tests/netns/sidecar_apps.py")
LOADGEN = str(REPO / "tests/e2e/loadgen.py")
CONSOLE_PORT = 8000
APP_PORT = 8080
PASSWORD = "e2e-operator-password"  # noqa: S105  (a throw-away test console)
SKELETON = ("etc", "run", "var/lib", "var/log", "tmp")

pytestmark = pytest.mark.e2e


def tree(root: Path) -> list[str]:
    """Every path under root with its mode: what "files equal to before" compares."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            found.append(f"{path.relative_to(root)} {oct(path.lstat().st_mode)}")
    return sorted(found)


@dataclass
class Node:
    """A VM that gets sofamesh installed, with its own root and proxy user."""

    vm: VM
    root: Path
    proxy_user: str
    mesh: Mesh
    cgroup: str | None = None  # eBPF: the VM's own cgroup v2 subtree (--cgroup)

    def sofamesh(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "agent", "--root", str(self.root), *args]
        base = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}
        return self.vm.run(
            argv, env={**base, **(env or {})}, check=check, input=input, timeout=timeout
        )

    def install_args(self, **override: str) -> list[str]:
        m = self.mesh
        values = {
            "-t": m.tenant,
            "-w": m.workspace,
            "-i": m.instance,
            "-n": m.app,
            "-a": m.key_id,
            "--console": m.agent_url,
            "--proxy-user": self.proxy_user,
            "--backend": m.backend,
        }
        if self.cgroup is not None:
            values["--cgroup"] = self.cgroup
        values.update(override)
        return ["install", *[x for pair in values.items() for x in pair]]

    def install(self, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {"SOFAMESH_SECRETKEY": self.mesh.secret}
        return self.sofamesh(*self.install_args(), *extra, env=env, check=check)

    def script(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """scripts/sofamesh.sh as an operator runs it on a VM (the seed's options)."""
        env = {"PATH": os.environ["PATH"], "SOFAMESH_ROOT": str(self.root)}
        return self.vm.run(
            ["bash", str(REPO / "scripts/sofamesh.sh"), *args],
            env=env,
            check=check,
            timeout=timeout,
        )

    def uninstall(self, check: bool = True) -> subprocess.CompletedProcess[str]:
        if (self.root / "opt/sofamesh").exists():
            return self.script("uninstall", check=check)
        return self.sofamesh("uninstall", check=check)

    @property
    def installed(self) -> bool:
        return (self.root / "etc/sofamesh/agent.json").exists() or (
            self.root / "opt/sofamesh"
        ).exists()

    def status(self) -> dict[str, Any]:
        path = self.root / "var/lib/sofamesh/agent-status.json"
        try:
            doc: dict[str, Any] = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return doc

    def wait_status(self, what: str, check: Any, deadline: float = 20.0) -> dict[str, Any]:
        def ok() -> dict[str, Any] | None:
            doc = self.status()
            return doc if doc and check(doc) else None

        try:
            return wait_until(ok, deadline=deadline, interval=0.1, what=f"{self.vm.name}: {what}")
        except LabTimeout:
            self.dump_stacks()
            raise AssertionError(
                f"{self.vm.name}: {what}: not within {deadline}s\nstatus: "
                f"{json.dumps(self.status(), indent=1)}\nagent log:\n{self.log_tail()}"
                f"\nkeeper log:\n{self.log_tail(name='keeper.log')}"
                f"\nsockets:\n{self.vm.run(['ss', '-tnp'], check=False).stdout}"
                f"\nconsole VM sockets:\n"
                f"{self.mesh.console_vm.run(['ss', '-tn'], check=False).stdout}"
                "\nconsole log:\n" + "\n".join(self.mesh.console_log().splitlines()[-25:])
            ) from None

    def dump_stacks(self) -> None:
        """SIGQUIT: the agent writes its threads' stacks to its log (for the failure text)."""
        pid = self.status().get("agent_pid")
        if isinstance(pid, int):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
                time.sleep(0.3)  # the handler writes synchronously; give it a moment

    def log_tail(self, lines: int = 30, name: str = "agent.log") -> str:
        path = self.root / "var/log/sofamesh" / name
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no agent log)"

    def sidecar_stats(self) -> dict[str, Any]:
        out = self.vm.run(["curl", "-sS", "--max-time", "5", "http://127.0.0.1:15000/stats"])
        doc: dict[str, Any] = json.loads(out.stdout)
        return doc

    def requests_seen(self, direction: str, port: int = APP_PORT) -> int:
        try:
            stats = self.sidecar_stats()
        except Exception:
            return 0
        return sum(
            int(p["requests_total"])
            for p in stats["ports"]
            if p["direction"] == direction and p["port"] == port
        )


@dataclass
class Mesh:
    lab: Lab
    base: Path
    backend: str
    tenant: str = ""
    workspace: str = "ws"
    instance: str = "inst"
    app: str = "web"
    key_id: str = ""
    secret: str = ""
    db_url: str = ""
    console_proc: subprocess.Popen[str] | None = None
    operator: NetnsClient | None = None
    nodes: dict[str, Node] = field(default_factory=dict)

    @property
    def console_vm(self) -> VM:
        return self.lab["console"]

    @property
    def agent_url(self) -> str:
        return f"http://{self.console_vm.ipv4}:{CONSOLE_PORT}"

    @property
    def api(self) -> NetnsClient:
        assert self.operator is not None
        return self.operator

    def admin(self, *args: str, input: str | None = None) -> str:
        argv = [sys.executable, "-m", "agent", "console", "admin", *args, "--db", self.db_url]
        done = subprocess.run(
            argv, capture_output=True, text=True, input=input, check=True, cwd=REPO
        )
        return done.stdout

    def start_console(self) -> None:
        self.db_url = f"sqlite:///{self.base}/console.db"
        subprocess.run(
            [sys.executable, "-m", "agent", "console", "migrate", "--db", self.db_url],
            check=True,
            capture_output=True,
            cwd=REPO,
        )
        self.tenant = f"t-{secrets.token_hex(3)}"
        self.admin("create-user", "op", "--password-stdin", input=PASSWORD + "\n")
        self.admin("create-tenant", self.tenant)
        self.admin("create-workspace", self.tenant, self.workspace)
        self.admin("create-instance", self.tenant, self.workspace, self.instance)
        key = json.loads(
            self.admin("create-key", "op", self.tenant, self.workspace, self.instance, "--json")
        )
        self.key_id, self.secret = key["key_id"], key["secret"]
        self.start_console_process_only()

    def stop_console(self) -> None:
        if self.console_proc is not None:
            self.console_vm.stop(self.console_proc, timeout=15)
            self.console_proc = None

    def start_console_process_only(self) -> None:
        """The console process on the existing database, and a logged-in operator."""
        if self.operator is not None:
            self.operator.close()
        log = (self.base / "console.log").open("a")
        self.console_proc = self.console_vm.spawn(
            [
                sys.executable,
                "-m",
                "agent",
                "console",
                "serve",
                "--db",
                self.db_url,
                "--listen",
                f"0.0.0.0:{CONSOLE_PORT}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)},
        )
        log.close()
        self.console_vm.wait_for_port(CONSOLE_PORT, host=None, process=self.console_proc)
        self.operator = NetnsClient(self.console_vm.netns_path, self.agent_url)
        answer = self.api.post("/api/v1/session", json={"username": "op", "password": PASSWORD})
        assert answer.status_code == 200, answer.text
        self.api.http.headers["X-CSRF-Token"] = answer.json()["csrf_token"]
        scope = {"tenant": self.tenant, "workspace": self.workspace, "instance_id": self.instance}
        assert self.api.put("/api/v1/session/scope", json=scope).status_code == 200

    def console_log(self) -> str:
        return (self.base / "console.log").read_text(errors="replace")

    # -- operator actions -------------------------------------------------------------------

    def switch(self, node: Node, on: bool) -> None:
        answer = self.api.put(
            f"/api/v1/apps/{self.app}/nodes/{node.vm.ipv4}/hijack", json={"enabled": on}
        )
        assert answer.status_code == 200, answer.text

    def set_params(self, **params: list[str]) -> None:
        body = {
            "inbound_exclude_ports": [],
            "outbound_exclude_cidrs": [],
            "outbound_exclude_ports": [],
            **params,
        }
        answer = self.api.put(f"/api/v1/apps/{self.app}/params", json=body)
        assert answer.status_code == 200, answer.text

    def set_limit(self, port: int, limit: int) -> None:
        answer = self.api.put(
            f"/api/v1/apps/{self.app}/governance", json={"limits": {str(port): limit}}
        )
        assert answer.status_code == 200, answer.text

    def sidecar_row(self, node: Node) -> dict[str, Any]:
        answer = self.api.get("/api/v1/sidecars")
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = next(row for row in answer.json() if row["node_ip"] == node.vm.ipv4)
        return found

    def console_requests(self) -> int:
        answer = self.api.get(f"/api/v1/monitoring/apps/{self.app}")
        assert answer.status_code == 200, answer.text
        return sum(int(point["requests"]) for point in answer.json()["series"])

    def console_node(self, node: Node) -> dict[str, Any]:
        answer = self.api.get(f"/api/v1/apps/{self.app}")
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = next(n for n in answer.json()["nodes"] if n["ip"] == node.vm.ipv4)
        return found


def start_app(vm: VM) -> subprocess.Popen[str]:
    """The server's HTTP app: GET /fast answers at once, GET /hold waits for /_release."""
    proc = vm.spawn(
        [sys.executable, "-P", APPS, "hold", "--port", str(APP_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    vm.wait_for_port(APP_PORT, host=None, process=proc)
    return proc


def get(vm: VM, host: str, path: str = "/fast", port: int = APP_PORT) -> dict[str, Any]:
    out = vm.run([sys.executable, "-P", APPS, "requests", host, str(port), path], check=False)
    doc: dict[str, Any] = json.loads(out.stdout) if out.stdout.strip() else {"error": out.stderr}
    return doc


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    if os.geteuid() != 0:
        pytest.skip("the e2e lab builds network namespaces: needs root")
    backend = os.environ.get("SOFAMESH_E2E_BACKEND", "auto")
    # Not under pytest's tmp dir (0700 parents): each node's proxy user must reach its files.
    base = Path(tempfile.mkdtemp(prefix="sofamesh-e2e-"))
    os.chmod(base, 0o755)  # noqa: S103
    with (
        _removed(base),
        Lab(["console", "server", "client", "plain"], ipv6=False) as lab,
        contextlib.ExitStack() as stack,
    ):
        m = Mesh(lab=lab, base=base, backend=backend)
        m.start_console()
        answer = m.api.post(
            "/api/v1/apps",
            json={
                "name": m.app,
                "ports": [APP_PORT],
                "nodes": [lab["server"].ipv4, lab["client"].ipv4],
            },
        )
        assert answer.status_code == 201, answer.text
        tag = secrets.token_hex(2)
        for name in ("server", "client"):
            root = base / name
            for sub in SKELETON:
                (root / sub).mkdir(parents=True)
            os.chmod(root, 0o755)  # noqa: S103
            m.nodes[name] = Node(lab[name], root, f"smp-{name[:3]}-{tag}", m)
            if backend == "ebpf":
                # Every process of the VM joins its own cgroup, where the hooks attach.
                cgroup = stack.enter_context(Cgroup(f"e2e-{name}-{tag}"))
                lab[name].cgroup = m.nodes[name].cgroup = str(cgroup.path)
        start_app(lab["server"])
        try:
            yield m
        finally:
            for node in m.nodes.values():
                if node.installed:
                    node.uninstall(check=False)
            if m.operator is not None:
                m.operator.close()
            m.stop_console()


def reset_console(mesh: Mesh) -> None:
    """Both switches on, no blacklists, no limits."""
    for node in mesh.nodes.values():
        mesh.switch(node, True)
    mesh.set_params()
    mesh.set_limit(APP_PORT, 0)


@pytest.fixture
def fresh(mesh: Mesh) -> Iterator[Mesh]:
    """Nothing installed before the test, nothing after; both switches on."""
    for node in mesh.nodes.values():
        if node.installed:
            node.uninstall()
    reset_console(mesh)
    yield mesh
    for node in mesh.nodes.values():
        if node.installed:
            done = node.uninstall(check=False)
            assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def installed(mesh: Mesh) -> Mesh:
    """Both nodes installed, switched on and converged. Installs are kept from one test to
    the next (installing is the slow part); a node a test left unhealthy is reinstalled."""
    reset_console(mesh)
    for node in mesh.nodes.values():
        doc = node.status()
        if node.installed and doc.get("running") and doc.get("agent_pid"):
            try:
                node.wait_status(
                    "converged after the reset",
                    lambda d: (
                        d["enabled"] is True
                        and d["converged"]
                        and d["sidecar"]["restarts"] == 0
                        and d["config"]["refused"] is None
                    ),
                    deadline=10,
                )
                continue
            except AssertionError:
                pass
        if node.installed:
            node.uninstall()
        node.install()
    return mesh


@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    counts: dict[str, int] = field(default_factory=dict)


@contextmanager
def load(vm: VM, host: str, path: str = "/fast", concurrency: int = 2) -> Iterator[LoadResult]:
    """Steady requests from vm to host:APP_PORT while the block runs; the counts after."""
    work = Path(tempfile.mkdtemp(prefix="load-"))
    stop, out = work / "stop", work / "out.json"
    proc = vm.spawn(
        [
            sys.executable,
            "-P",
            LOADGEN,
            host,
            str(APP_PORT),
            path,
            "--stop",
            str(stop),
            "--out",
            str(out),
            "--concurrency",
            str(concurrency),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    result = LoadResult()
    try:
        yield result
    finally:
        stop.touch()
        proc.wait(timeout=30)
        doc = json.loads(out.read_text())
        result.ok, result.failed, result.counts = doc["ok"], doc["failed"], doc["counts"]
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def _removed(path: Path) -> Iterator[None]:
    try:
        yield
    finally:
        if not os.environ.get("SOFAMESH_E2E_KEEP"):  # set it to read the nodes' logs after
            shutil.rmtree(path, ignore_errors=True)


def wait_for(what: str, predicate: Any, deadline: float = 20.0) -> Any:
    return wait_until(predicate, deadline=deadline, interval=0.1, what=what)


def elapsed(start: float) -> float:
    return time.monotonic() - start
