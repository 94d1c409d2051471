"""`sofamesh demo`: the whole product flow in network-namespace VMs (R-FL-3).

A console VM runs the console on SQLite; the operator (this process, speaking HTTP from
inside the console VM) creates an app with two nodes; `scripts/sofamesh.sh install` runs
on a server VM and a client VM with the seed's options; the client calls the server's app
through both sidecars and the console's metrics count it; the server is switched off in
the console and its traffic goes direct, then back on; both nodes are uninstalled. Every
step is printed. Nothing outside the lab's namespaces and a temporary directory is
touched, and both are removed at the end (or on Ctrl-C).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from netlab import VM, Lab, wait_until
from netlab.nsclient import NetnsClient

Say = Callable[[str], None]
REPO = Path(__file__).resolve().parents[1]
CONSOLE_PORT = 8000
APP_PORT = 8080
PASSWORD = "demo-operator-password"  # noqa: S105  (a throw-away console in a temp dir)


class DemoError(Exception):
    """A demo step did not do what it should."""


class Demo:
    def __init__(self, lab: Lab, workdir: Path, backend: str, say: Say) -> None:
        self.lab, self.workdir, self.backend, self.say = lab, workdir, backend, say
        self.console_vm, self.server, self.client = lab["console"], lab["server"], lab["client"]
        self.url = f"http://{self.console_vm.ipv4}:{CONSOLE_PORT}"
        self.db = f"sqlite:///{workdir}/console.db"
        self.api: NetnsClient | None = None
        self.installed: list[VM] = []

    # -- helpers ---------------------------------------------------------------------------

    def cli(self, *args: str, input: str | None = None) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "agent", *args],
            capture_output=True,
            text=True,
            input=input,
            check=False,
        )
        if done.returncode != 0:
            raise DemoError(f"sofamesh {' '.join(args[:3])}: {done.stderr.strip()}")
        return done.stdout

    def call(self, method: str, path: str, body: Any = None) -> Any:
        assert self.api is not None
        answer = self.api.request(method, path, json=body)
        if answer.status_code >= 400:
            raise DemoError(f"{method} {path}: {answer.status_code} {answer.text}")
        return answer.json() if answer.content else None

    def root(self, vm: VM) -> Path:
        return self.workdir / vm.name

    def script(self, vm: VM, *args: str) -> str:
        env = {"PATH": os.environ.get("PATH", ""), "SOFAMESH_ROOT": str(self.root(vm))}
        done = vm.run(
            ["bash", str(REPO / "scripts/sofamesh.sh"), *args],
            env=env,
            check=False,
            timeout=300,
        )
        if done.returncode != 0:
            raise DemoError(f"{vm.name}: sofamesh.sh {args[0]}: {done.stderr.strip()}")
        return done.stdout

    def curl(self, vm: VM, url: str) -> str:
        done = vm.run(["curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", url])
        return done.stdout

    def sidecar_requests(self, vm: VM, direction: str) -> int:
        done = vm.run(["curl", "-sS", "-m", "5", "http://127.0.0.1:15000/stats"], check=False)
        if done.returncode != 0:
            return 0
        return sum(
            int(p["requests_total"])
            for p in json.loads(done.stdout)["ports"]
            if p["direction"] == direction and p["port"] == APP_PORT
        )

    def node_status(self, vm: VM) -> dict[str, Any]:
        path = self.root(vm) / "var/lib/sofamesh/agent-status.json"
        try:
            doc: dict[str, Any] = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return doc

    def wait_node(self, vm: VM, what: str, check: Callable[[dict[str, Any]], bool]) -> None:
        wait_until(
            lambda: bool(self.node_status(vm)) and check(self.node_status(vm)),
            deadline=20,
            interval=0.1,
            what=f"{vm.name}: {what}",
        )

    # -- the flow --------------------------------------------------------------------------

    def start_console(self) -> None:
        self.cli("console", "migrate", "--db", self.db)
        self.cli("console", "admin", "create-user", "op", "--password-stdin", "--db", self.db,
                 input=PASSWORD + "\n")  # fmt: skip
        self.cli("console", "admin", "create-tenant", "acme", "--db", self.db)
        self.cli("console", "admin", "create-workspace", "acme", "prod", "--db", self.db)
        self.cli("console", "admin", "create-instance", "acme", "prod", "demo", "--db", self.db)
        admin = ("console", "admin")
        made = self.cli(
            *admin, "create-key", "op", "acme", "prod", "demo", "--json", "--db", self.db
        )
        key = json.loads(made)
        self.key_id, self.secret = key["key_id"], key["secret"]
        log = (self.workdir / "console.log").open("w")
        proc = self.console_vm.spawn(
            [sys.executable, "-m", "agent", "console", "serve", "--db", self.db,
             "--listen", f"0.0.0.0:{CONSOLE_PORT}"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        self.console_vm.wait_for_port(CONSOLE_PORT, host=None, process=proc)
        self.api = NetnsClient(self.console_vm.netns_path, self.url)
        login = self.call("POST", "/api/v1/session", {"username": "op", "password": PASSWORD})
        self.api.http.headers["X-CSRF-Token"] = login["csrf_token"]
        scope = {"tenant": "acme", "workspace": "prod", "instance_id": "demo"}
        self.call("PUT", "/api/v1/session/scope", scope)

    def start_app(self) -> subprocess.Popen[str]:
        www = self.workdir / "www"
        www.mkdir()
        (www / "hello.txt").write_text("hello from the app on the server VM\n")
        app = self.server.spawn(
            [sys.executable, "-m", "http.server", str(APP_PORT), "--bind", "::",
             "--directory", str(www)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.server.wait_for_port(APP_PORT, host=None, process=app)
        return app

    def run(self) -> None:
        say, server, client = self.say, self.server, self.client
        say(f"lab: console {self.console_vm.ipv4}, server {server.ipv4}, client {client.ipv4}")
        say("     (each VM a network namespace; nothing outside them is touched)")
        say("1. start the console (SQLite) and create tenant acme/prod/demo and an access key")
        self.start_console()
        say(f"   console at {self.url}; access key {self.key_id} (secret shown once, kept here)")
        say(f"2. operator: add app 'web' (port {APP_PORT}) with nodes server and client, hijack on")
        nodes = [server.ipv4, client.ipv4]
        self.call("POST", "/api/v1/apps", {"name": "web", "ports": [APP_PORT], "nodes": nodes})
        for vm in (server, client):
            self.call("PUT", f"/api/v1/apps/web/nodes/{vm.ipv4}/hijack", {"enabled": True})
        env = self.call("GET", f"/api/v1/environment?app=web&ip={server.ipv4}")
        say(f"   the console's install command: {env['install_command']}")
        app = self.start_app()
        url = f"http://{server.ipv4}:{APP_PORT}/hello.txt"
        say(f"3. before install, client -> {url}: {self.curl(client, url)} (direct)")
        say("4. build the install package and run sofamesh.sh install on both VMs")
        artifacts = self.workdir / "artifacts"
        subprocess.run(
            ["bash", str(REPO / "scripts/build-artifacts.sh"), str(artifacts),
             "--console", self.url],
            check=True,
            capture_output=True,
        )  # fmt: skip
        for vm in (server, client):
            self.root(vm).mkdir()
            for sub in ("etc", "run", "var/lib", "var/log"):
                (self.root(vm) / sub).mkdir(parents=True)
            out = self.script(
                vm, "install", "-t", "acme", "-w", "prod", "-i", "demo", "-n", "web",
                "-a", self.key_id, "-s", self.secret, "-f", str(artifacts),
                "--proxy-user", f"sofamesh-demo-{vm.name}", "--backend", self.backend,
            )  # fmt: skip
            self.installed.append(vm)
            say(f"   {vm.name}: {out.strip().splitlines()[-1]}")
        self.show_traffic(url)
        self.switch_server(url)
        say("8. uninstall both nodes (rules first, then drain the sidecar)")
        self.uninstall_all(app)

    def show_traffic(self, url: str) -> None:
        say, server, client = self.say, self.server, self.client
        say("5. client -> server through both sidecars:")
        for _ in range(5):
            say(f"   GET {url}: {self.curl(client, url)}")
        out, inb = (
            self.sidecar_requests(client, "outbound"),
            self.sidecar_requests(server, "inbound"),
        )
        say(f"   client sidecar counted {out} outbound, server sidecar {inb} inbound requests")
        say("   waiting for the agents' next metrics report (every 10 s)...")
        wait_until(lambda: self.console_requests() >= 5, deadline=30, what="console metrics")
        say(f"   console: app web served {self.console_requests()} requests in the last 5 min")
        for row in self.call("GET", "/api/v1/sidecars"):
            say(f"   console sidecar list: {row['node_ip']} {row['sidecar_status']}"
                f" healthy={row['healthy']} backend={row['backend']}")  # fmt: skip

    def switch_server(self, url: str) -> None:
        say, server, client = self.say, self.server, self.client
        say("6. operator switches the server off in the console")
        self.call("PUT", f"/api/v1/apps/web/nodes/{server.ipv4}/hijack", {"enabled": False})
        self.wait_node(server, "rules removed", lambda d: not d["rules"]["installed"])
        say("   server agent: rules removed, sidecar drained and stopped")
        say(f"   GET {url}: {self.curl(client, url)} (straight to the app now)")
        say("7. and back on")
        self.call("PUT", f"/api/v1/apps/web/nodes/{server.ipv4}/hijack", {"enabled": True})
        self.wait_node(server, "intercepting again", lambda d: d["enabled"] and d["converged"])
        code = self.curl(client, url)
        counted = self.sidecar_requests(server, "inbound")
        say(f"   GET {url}: {code}; the server's new sidecar counted {counted}")

    def uninstall_all(self, app: subprocess.Popen[str]) -> None:
        say, server = self.say, self.server
        for vm in (server, self.client):
            out = self.script(vm, "uninstall")
            self.installed.remove(vm)
            say(f"   {vm.name}: {out.strip().splitlines()[-1]}")
        left = self.server.run(["nft", "list", "ruleset"]).stdout.strip()
        say(f"   server ruleset after uninstall: {left or '(empty)'}")
        _, app_log = server.stop(app)
        peers = sorted({line.split()[0] for line in app_log.splitlines() if "GET /" in line})
        say(f"   the app saw requests from: {', '.join(peers)}"
            " (::ffff:127.0.0.6 = through its sidecar)")  # fmt: skip

    def console_requests(self) -> int:
        doc = self.call("GET", "/api/v1/monitoring/apps/web")
        return sum(int(point["requests"]) for point in doc["series"])

    def cleanup(self) -> None:
        for vm in list(self.installed):
            try:
                self.script(vm, "uninstall")
            except DemoError as exc:
                self.say(f"cleanup: {exc}")
        if self.api is not None:
            self.api.close()


@contextmanager
def workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sofamesh-demo-") as tmp:
        os.chmod(tmp, 0o755)  # noqa: S103  (the proxy users read their configs below)
        yield Path(tmp)


def run_demo(backend: str, say: Say) -> None:
    with workspace() as workdir, Lab(["console", "server", "client"], ipv6=False) as lab:
        demo = Demo(lab, workdir, backend, say)
        try:
            demo.run()
        finally:
            demo.cleanup()
    say("done: the lab's namespaces and files are gone; nothing was changed outside them")
