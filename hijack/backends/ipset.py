"""ipset management for the iptables backend: the blacklists as kernel sets (R-HJ-7).

Each set is filled under a temporary name and swapped into place, so rules that reference
a set never see it half-filled.
"""

from __future__ import annotations

import ipaddress
import re

from hijack.backends.base import normalize_networks, normalize_ports
from hijack.command import Runner
from hijack.model import SetSpec
from hijack.values import IPNetwork, PortRange

SET_PREFIX = "sofamesh-"
NEXT_SUFFIX = "-next"
MIN_MAXELEM = 65536


def kernel_name(plan_name: str) -> str:
    return SET_PREFIX + plan_name.replace("_", "-")


def create_line(name: str, spec: SetSpec) -> str:
    if spec.kind == "port":
        return f"create {name} bitmap:port range 0-65535"
    family = "inet" if spec.kind == "ipv4" else "inet6"
    maxelem = max(MIN_MAXELEM, 2 * len(spec.networks))
    return f"create {name} hash:net family {family} hashsize 1024 maxelem {maxelem}"


def elements(spec: SetSpec) -> list[str]:
    if spec.kind == "port":
        return [f"{r.first}-{r.last}" if r.first != r.last else str(r.first) for r in spec.ports]
    out: list[str] = []
    for net in spec.networks:
        # hash:net cannot hold a /0: store it as its two halves.
        out.extend(str(n) for n in (net.subnets(1) if net.prefixlen == 0 else (net,)))
    return out


def restore_script(specs: tuple[SetSpec, ...], existing: set[str]) -> str:
    """An `ipset restore` script that builds each set aside and swaps it in."""
    lines: list[str] = []
    for spec in specs:
        live = kernel_name(spec.name)
        temp = live + NEXT_SUFFIX
        if temp in existing:
            lines.append(f"destroy {temp}")
        lines.append(create_line(temp, spec))
        lines += [f"add {temp} {e}" for e in elements(spec)]
        if live not in existing:
            lines.append(create_line(live, spec))
        lines += [f"swap {temp} {live}", f"destroy {temp}"]
    return "\n".join(lines) + "\n"


def list_sets(runner: Runner) -> set[str]:
    if runner.which("ipset") is None:
        return set()
    result = runner.run(["ipset", "list", "-n"], check=False)
    return {n for n in result.stdout.split() if n.startswith(SET_PREFIX)}


def save(runner: Runner, name: str) -> tuple[str, list[str]]:
    """(create line, element strings) of one set."""
    text = runner.run(["ipset", "save", name]).stdout
    header = ""
    items: list[str] = []
    for line in text.splitlines():
        if line.startswith("create "):
            header = line
        elif line.startswith("add "):
            items.append(line.split(" ", 2)[2].strip())
    return header, items


def normalized(header: str, items: list[str]) -> tuple[str, ...]:
    if "bitmap:port" in header:
        ports = []
        for item in items:
            first, _, last = item.partition("-")
            ports.append(PortRange(int(first), int(last or first)))
        return normalize_ports(ports)
    nets: list[IPNetwork] = [ipaddress.ip_network(re.sub(r"\s.*", "", i)) for i in items]
    return normalize_networks(nets)


def snapshot_script(runner: Runner, names: set[str]) -> str:
    """A restore script that puts these sets back as they are now (for rollback)."""
    lines: list[str] = []
    for name in sorted(names):
        header, items = save(runner, name)
        temp = name + NEXT_SUFFIX
        lines.append(header.replace(f"create {name} ", f"create {temp} ", 1))
        lines += [f"add {temp} {i}" for i in items]
        lines += [f"swap {temp} {name}", f"destroy {temp}"]
    return "\n".join(lines) + ("\n" if lines else "")
