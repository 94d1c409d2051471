"""`sofamesh demo`: the interception flow end to end in network-namespace VMs.

A node VM runs an HTTP app and the real sidecar (as the proxy user); the interception
rules are installed in the order the agent will use (sidecar healthy first, then rules;
rules removed first, then the sidecar drained). A client VM calls the app through the
sidecar, the node calls out through it, blacklisted traffic goes direct, and the sidecar's
own counters show what passed. Nothing outside the lab's namespaces is touched; the lab
is torn down on exit or Ctrl-C.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from netlab import VM, Lab

PROXY_UID = 1337
Say = Callable[[str], None]


class Demo:
    def __init__(self, lab: Lab, backend: str, workdir: Path, say: Say) -> None:
        self.lab, self.backend, self.workdir, self.say = lab, backend, workdir, say
        self.node, self.client, self.db = lab["node"], lab["client"], lab["db"]

    def sofamesh(self, *args: str) -> str:
        argv = [sys.executable, "-m", "agent", "--root", str(self.workdir), *args]
        return self.node.run(argv, timeout=120).stdout

    def call(self, src: VM, dst: str, port: int) -> str:
        got = src.probe_connect(dst, port)
        if "error" in got:
            return f"{src.name} -> {dst}:{port}: FAILED ({got['error']})"
        return f"{src.name} -> {dst}:{port}: answered by {got['name']}, which saw {got['peer']}"

    def curl(self, url: str) -> str:
        result = self.client.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} bytes", url],
            check=False,
        )
        return f"client: GET {url} -> {result.stdout or result.stderr.strip()}"

    def sidecar_stats(self) -> dict[str, Any]:
        out = self.node.run(["curl", "-sS", "http://127.0.0.1:15000/stats"]).stdout
        doc: dict[str, Any] = json.loads(out)
        return doc

    def start_apps(self) -> None:
        www = self.workdir / "www"
        www.mkdir()
        (www / "hello.txt").write_text("hello from the app on node\n")
        www.chmod(0o755)
        self.app = self.node.spawn(
            [sys.executable, "-m", "http.server", "8080", "--bind", "::", "--directory", str(www)]
        )
        self.node.wait_for_port(8080, host=None, process=self.app)
        for vm, port in ((self.node, 9090), (self.client, 8080), (self.db, 5432)):
            args = [
                "listen",
                "--port",
                str(port),
                "--family",
                "both",
                "--name",
                f"{vm.name}-app:{port}",
            ]
            proc = vm.spawn(vm.probe_argv(args))
            vm.wait_for_port(port, host=None, process=proc)

    def start_sidecar(self) -> None:
        state = self.workdir / "sidecar"
        state.mkdir()
        os.chown(state, PROXY_UID, PROXY_UID)
        config = self.workdir / "sidecar.json"
        config.write_text(json.dumps({"state_dir": str(state), "limits": {"8080": 100}}))
        self.sidecar = self.node.spawn(
            [sys.executable, "-m", "agent", "sidecar", "run", "--config", str(config)],
            user=PROXY_UID,
        )
        self.node.wait_for_port(15000, process=self.sidecar)

    def run(self) -> None:
        say, node = self.say, self.node
        say(f"lab: node {node.ipv4}, client {self.client.ipv4}, db {self.db.ipv4}")
        say("     (each VM a network namespace; the bridge lives in its own namespace)")
        self.start_apps()
        say("node runs an HTTP app on 8080 and a TCP service on 9090")
        app_url = f"http://{node.ipv4}:8080/hello.txt"
        say("1. before install, traffic is direct:")
        say("   " + self.curl(app_url))
        say("2. start the sidecar as the proxy user (uid 1337) and wait until it is healthy")
        self.start_sidecar()
        config = {
            "proxy": {"user": PROXY_UID},
            "inbound": {"exclude_ports": [9090]},
            "outbound": {"exclude_cidrs": [f"{self.db.ipv4}/32"]},
        }
        path = self.workdir / "hijack.json"
        path.write_text(json.dumps(config, indent=2))
        say(f"3. then install interception ({self.backend}); config: {json.dumps(config)}")
        for line in self.sofamesh(
            "hijack", "apply", "--backend", self.backend, "--config", str(path)
        ).splitlines():
            say("   " + line)
        say("4. inbound HTTP now flows through the sidecar, which meters it:")
        for _ in range(3):
            say("   " + self.curl(app_url))
        say("   " + self.curl(f"http://{node.ipv4}:8080/missing"))
        say("   blacklisted port 9090 stays direct:")
        say("   " + self.call(self.client, node.ipv4, 9090))
        say("5. outbound: node -> client:8080 goes through the sidecar;")
        say("   node -> db (a blacklisted CIDR) goes direct:")
        say("   " + self.call(node, self.client.ipv4, 8080))
        say("   " + self.call(node, self.db.ipv4, 5432))
        say("6. what the sidecar counted (GET 127.0.0.1:15000/stats):")
        for port in self.sidecar_stats()["ports"]:
            codes = port["responses"]
            say(
                f"   {port['direction']:>8} port {port['port']:<5}"
                f" connections {port['connections_total']} requests {port['requests_total']}"
                f" 2xx {codes['2xx']} 4xx {codes['4xx']}"
                f" bytes in/out {port['bytes_received']}/{port['bytes_sent']}"
            )
        say("7. the rules, with hit counters and digest (sofamesh hijack status):")
        for line in self.sofamesh("hijack", "status").splitlines()[:6]:
            say("   " + line)
        say("8. uninstall in the safe order: rules first, then drain the sidecar:")
        say("   " + self.sofamesh("hijack", "remove").strip())
        self.sidecar.terminate()
        code = self.sidecar.wait(timeout=30)
        say(f"   sidecar drained and exited with status {code}")
        say("   " + self.curl(app_url))
        _, app_log = node.stop(self.app)
        peers = sorted({line.split()[0] for line in app_log.splitlines() if "GET /" in line})
        say(f"   the app saw requests from: {', '.join(peers)} (127.0.0.6 = through the sidecar)")


@contextmanager
def workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sofamesh-demo-") as tmp:
        os.chmod(tmp, 0o755)  # noqa: S103  (the sidecar, uid 1337, reads its config here)
        yield Path(tmp)


def run_demo(backend: str, say: Say) -> None:
    with workspace() as workdir, Lab(["node", "client", "db"], ipv6=True) as lab:
        Demo(lab, backend, workdir, say).run()
    say("done: the lab's namespaces are gone; nothing was changed outside them")
