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

from netlab import VM, Cgroup, Lab

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
    # eBPF only: the node's own cgroup v2 subtree (the hooks attach there).
    cgroup: Cgroup | None = None

    @property
    def bpffs(self) -> Path:
        """Where the CLI (run with --root) mounts the bpffs it pins the eBPF objects on."""
        return self.root / "sys/fs/bpf"

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
        extra = ["--cgroup", str(self.cgroup.path)] if self.cgroup is not None else []
        return self.sofamesh(
            "hijack",
            "apply",
            "--backend",
            self.backend,
            "--config",
            str(path),
            *extra,
            check=check,
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
        if self.cgroup is not None:
            parts.append(f"== bpf objects\n{self.bpf_dump()}")
        return "\n".join(parts)

    def bpf_dump(self) -> str:
        """What is attached to the node's cgroup and netns, and what is pinned, without ids
        (they change on every install) or counters."""
        assert self.cgroup is not None
        lines = []
        out = self.node.run(
            ["bpftool", "-j", "cgroup", "show", str(self.cgroup.path)]
        ).stdout.strip()
        for prog in json.loads(out or "[]"):
            lines.append(f"cgroup {prog.get('attach_type')} {prog.get('name')}")
        links = json.loads(self.node.run(["bpftool", "-j", "link", "show"]).stdout.strip() or "[]")
        netns_ino = self.node.run(["stat", "-L", "-c", "%i", "/proc/self/ns/net"]).stdout.strip()
        for link in links:
            if str(link.get("netns_ino")) == netns_ino:
                lines.append(f"netns link {link.get('attach_type')}")
        ours = self.bpffs / "sofamesh"  # (a fresh bpffs also holds the kernel's *.debug files)
        if ours.exists():
            lines.append("pin sofamesh/")
            lines += [f"pin {path.name}" for path in ours.rglob("*") if path.is_file()]
        return "\n".join(sorted(lines))


def landed(result: dict[str, Any]) -> str:
    """The name of the listener a probe connection reached, or its error."""
    return str(result.get("name") or f"error:{result.get('error')}")
