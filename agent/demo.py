"""`sofamesh demo`: the interception flow end to end in network-namespace VMs.

Until the sidecar and the console land, a minimal transparent forwarder (netlab's probe,
running as the proxy user) stands in for the sidecar, so the demo shows real traffic
being intercepted, passing through the stand-in, and reaching the real destination.
Nothing outside the lab's namespaces is touched; the lab is torn down on exit or Ctrl-C.
"""

from __future__ import annotations

import json
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
        return (
            f"{src.name} -> {dst}:{port}: answered by {got['name']}, "
            f"which saw the connection come from {got['peer']}"
        )

    def start_services(self) -> None:
        for vm, port in (
            (self.node, 8080),
            (self.node, 9090),
            (self.client, 8080),
            (self.db, 5432),
        ):
            proc = vm.spawn(
                vm.probe_argv(
                    [
                        "listen",
                        "--port",
                        str(port),
                        "--family",
                        "both",
                        "--name",
                        f"{vm.name}-app:{port}",
                    ]
                )
            )
            vm.wait_for_port(port, host=None, process=proc)
        self.sidecar = {
            "in": self._forwarder(15006, "sidecar-inbound", "127.0.0.6"),
            "out": self._forwarder(15001, "sidecar-outbound", None),
        }

    def _forwarder(self, port: int, name: str, source: str | None) -> Any:
        args = ["forward", "--port", str(port), "--family", "both", "--name", name]
        if source:
            args += ["--source", source]
        proc = self.node.spawn(self.node.probe_argv(args), user=PROXY_UID)
        self.node.wait_for_port(port, host=None, process=proc)
        return proc

    def run(self) -> None:
        say, node = self.say, self.node
        say(f"lab: node {node.ipv4}, client {self.client.ipv4}, db {self.db.ipv4}")
        say("     (each VM a network namespace; the bridge lives in its own namespace)")
        self.start_services()
        say("node runs apps on 8080 and 9090;")
        say("a stand-in sidecar (uid 1337) listens on 15006 (inbound) and 15001 (outbound)")
        say("1. before install, traffic is direct:")
        say("   " + self.call(self.client, node.ipv4, 8080))
        config = {
            "proxy": {"user": PROXY_UID},
            "inbound": {"exclude_ports": [9090]},
            "outbound": {"exclude_cidrs": [f"{self.db.ipv4}/32"]},
        }
        path = self.workdir / "hijack.json"
        path.write_text(json.dumps(config, indent=2))
        say(f"2. install interception ({self.backend}); config: {json.dumps(config)}")
        for line in self.sofamesh(
            "hijack", "apply", "--backend", self.backend, "--config", str(path)
        ).splitlines():
            say("   " + line)
        say("3. inbound: client -> node:8080 is redirected to the sidecar,")
        say("   which forwards it to the app from 127.0.0.6:")
        say("   " + self.call(self.client, node.ipv4, 8080))
        say("   port 9090 is blacklisted, so it stays direct:")
        say("   " + self.call(self.client, node.ipv4, 9090))
        say("   SSH-class ports (1-1024 except 80) are never intercepted.")
        say("4. outbound: node -> client:8080 goes through the sidecar's outbound listener:")
        say("   " + self.call(node, self.client.ipv4, 8080))
        say("   node -> db (a blacklisted CIDR) goes direct:")
        say("   " + self.call(node, self.db.ipv4, 5432))
        say("5. the rules, with hit counters and digest (sofamesh hijack status):")
        for line in self.sofamesh("hijack", "status").splitlines():
            say("   " + line)
        say("6. uninstall (sofamesh hijack remove):")
        say("   " + self.sofamesh("hijack", "remove").strip())
        say("   " + self.call(self.client, node.ipv4, 8080))
        for key, proc in self.sidecar.items():
            out, _ = node.stop(proc)
            seen = [json.loads(line) for line in out.splitlines() if line.strip()]
            say(
                f"   the stand-in sidecar ({key}bound) carried {len(seen)} connection(s): "
                + ", ".join(f"{s['peer']} -> {s['orig_dst']}" for s in seen)
            )


@contextmanager
def workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sofamesh-demo-") as tmp:
        yield Path(tmp)


def run_demo(backend: str, say: Say) -> None:
    with workspace() as workdir, Lab(["node", "client", "db"], ipv6=True) as lab:
        Demo(lab, backend, workdir, say).run()
    say("done: the lab's namespaces are gone; nothing was changed outside them")
