"""A namespace-VM topology for interception tests: a node under test with listeners that
report where each connection landed, a peer and another host, and the sofamesh CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netlab import VM, Lab

PROXY_UID = 1337  # no passwd entry needed: rules and setuid take the number
INBOUND, OUTBOUND = 15006, 15001
NODE_APP_PORTS = (80, 8080, 8081, 22, 443, 9090)
PEER_PORTS = (80, 8080, 3306, 5432)


@dataclass
class Mesh:
    lab: Lab
    backend: str
    root: Path
    listeners: dict[tuple[str, int], subprocess.Popen[str]] = field(default_factory=dict)

    @property
    def node(self) -> VM:
        return self.lab["node"]

    @property
    def peer(self) -> VM:
        return self.lab["peer"]

    @property
    def other(self) -> VM:
        return self.lab["other"]

    def listen(self, vm: VM, port: int, name: str | None = None) -> None:
        proc = vm.spawn(
            vm.probe_argv(
                [
                    "listen",
                    "--port",
                    str(port),
                    "--family",
                    "both",
                    "--name",
                    name or f"{vm.name}:{port}",
                ]
            )
        )
        self.listeners[(vm.name, port)] = proc
        vm.wait_for_port(port, host=None, process=proc)

    def forward(
        self, vm: VM, port: int, name: str, source: str | None = None
    ) -> subprocess.Popen[str]:
        args = ["forward", "--port", str(port), "--family", "both", "--name", name]
        if source:
            args += ["--source", source]
        proc = vm.spawn(vm.probe_argv(args), user=PROXY_UID)
        vm.wait_for_port(port, host=None, process=proc)
        return proc

    def sofamesh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "agent", "--root", str(self.root), *args]
        return self.node.run(argv, check=check, timeout=120)

    def config_file(self, doc: dict[str, Any], name: str = "hijack.json") -> Path:
        merged = {"proxy": {"user": PROXY_UID}, **doc}
        path = self.root / name
        path.write_text(json.dumps(merged))
        return path

    def apply(
        self, doc: dict[str, Any] | None = None, *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        path = self.config_file(doc or {})
        return self.sofamesh(
            "hijack", "apply", "--backend", self.backend, "--config", str(path), check=check
        )

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.sofamesh("hijack", "status", "--json").stdout)
        return result

    def dump(self) -> str:
        """Every rule and set in the node's netns, counters zeroed (they move with traffic)."""
        parts = []
        for cmd in (
            ["iptables-legacy-save"],
            ["ip6tables-legacy-save"],
            ["nft", "list", "ruleset"],
            ["ipset", "save"],
            ["ip", "-6", "addr", "show", "dev", "lo"],  # ::6, the sidecar's IPv6 source
        ):
            out = self.node.run(cmd, check=False).stdout
            out = re.sub(r"^#.*$", "", out, flags=re.M)
            out = re.sub(r"\[\d+:\d+\]", "[0:0]", out)
            out = re.sub(r"packets \d+ bytes \d+", "packets 0 bytes 0", out)
            out = re.sub(r" initval 0x[0-9a-f]+", "", out)  # ipset hash seeds are random
            parts.append(f"== {' '.join(cmd)}\n{out.strip()}")
        return "\n".join(parts)


def landed(result: dict[str, Any]) -> str:
    """The name of the listener a probe connection reached, or its error."""
    return str(result.get("name") or f"error:{result.get('error')}")
