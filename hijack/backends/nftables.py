"""nftables backend: one dedicated `inet sofamesh` table, loaded in one transaction.

For hosts whose iptables is nft-based (R-HJ-5). The whole table is replaced by one
`nft -f -` run ("create, delete, define" in one batch), so an apply is all-or-nothing and a
second apply atomically replaces the first (R-HJ-6). Blacklists are interval sets (R-HJ-7).
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from hijack.backends import loopback
from hijack.backends.base import (
    PARK_COMMENT,
    PARK_PORT,
    Backend,
    normalize_networks,
    normalize_ports,
)
from hijack.backends.legacy import sofamesh_chains
from hijack.errors import ApplyFailed, CommandFailed
from hijack.model import (
    PREFIX,
    Installed,
    InstalledRule,
    Jump,
    Match,
    Plan,
    Redirect,
    Return,
    Rule,
    SetSpec,
    View,
)
from hijack.values import IPNetwork, PortRange

TABLE = PREFIX  # inet sofamesh
FAMILY = "inet"
SET_TYPES = {"ipv4": "ipv4_addr", "ipv6": "ipv6_addr", "port": "inet_service"}
# nat priorities as iptables uses them, so ordering against iptables-nft's own nat is stable.
HOOKS = {"prerouting": "priority dstnat", "output": "priority -100"}


class NftablesBackend(Backend):
    name = "nftables"

    def unavailable_reason(self) -> str | None:
        if self.runner.which("nft") is None:
            return "the nft command is missing (install the nftables package)"
        result = self.runner.run(["nft", "list", "tables"], check=False)
        if result.returncode != 0:
            return f"nft cannot talk to the kernel: {result.stderr.strip()}"
        return None

    # -- render ---------------------------------------------------------------------------

    def render(self, plan: Plan) -> str:
        lines = [
            f"# sofamesh nftables plan; families: {', '.join(f'ipv{f}' for f in plan.families)}",
            *(f"# {note}" for note in plan.notes),
            # Create-then-delete makes the batch valid whether or not the table exists.
            f"table {FAMILY} {TABLE} {{}}",
            f"delete table {FAMILY} {TABLE}",
            f"table {FAMILY} {TABLE} {{",
        ]
        for spec in plan.sets:
            lines += _render_set(spec)
        for hook in ("prerouting", "output"):
            rules = [h.rule for h in plan.hooks if h.hook == hook]
            lines.append(f"\tchain {hook} {{")
            lines.append(f"\t\ttype nat hook {hook} {HOOKS[hook]}; policy accept;")
            lines += [f"\t\t{_render_rule(r)}" for r in rules]
            lines.append("\t}")
        for chain in plan.chains:
            lines.append(f"\tchain {chain.name} {{")
            lines += [f"\t\t{_render_rule(r)}" for r in chain.rules]
            lines.append("\t}")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def expected_view(self, plan: Plan) -> View:
        chains = [
            (f"{TABLE}/{hook}", tuple(h.rule.comment for h in plan.hooks if h.hook == hook))
            for hook in ("prerouting", "output")
        ]
        chains += [(f"{TABLE}/{c.name}", tuple(r.comment for r in c.rules)) for c in plan.chains]
        sets = [(s.name, _normalize_spec(s)) for s in plan.sets]
        if 6 in plan.families:
            sets.append((loopback.VIEW_KEY, (f"{loopback.ADDRESS}/128",)))
        return View(tuple(sorted(chains)), tuple(sorted(sets)))

    # -- kernel ---------------------------------------------------------------------------

    def apply(self, plan: Plan) -> None:
        if 6 in plan.families:
            loopback.ensure(self.runner)
        try:
            self.runner.run(["nft", "-f", "-"], stdin=self.render(plan))
        except CommandFailed as exc:
            # One batch: the kernel applied none of it; the previous table is intact.
            raise ApplyFailed(
                f"nft rejected the plan, nothing changed: {exc.stderr.strip()}"
            ) from exc

    def remove(self, *, park: bool = False) -> bool:
        existed = self._table_exists()
        script = f"table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}\n"
        if park:
            # Empty nat base chains keep the kernel's NAT hooks (which translate connections
            # redirected earlier); the unreached redirect keeps conntrack on in the namespace.
            rule = f'meta l4proto tcp redirect to :{PARK_PORT} comment "{PARK_COMMENT}"'
            hooks = "".join(
                f"\tchain {hook} {{\n\t\ttype nat hook {hook} {prio}; policy accept;\n\t}}\n"
                for hook, prio in HOOKS.items()
            )
            script += f"table {FAMILY} {TABLE} {{\n{hooks}\tchain parked {{\n\t\t{rule}\n\t}}\n}}\n"
        if existed or park:
            self.runner.run(["nft", "-f", "-"], stdin=script)
        if not park:
            loopback.remove(self.runner)
        return existed

    def inspect(self) -> Installed:
        if not self._table_exists():
            return Installed(self.name, (), View((), ()))
        doc = json.loads(self.runner.run(["nft", "-j", "list", "table", FAMILY, TABLE]).stdout)
        text = self.runner.run(["nft", "list", "table", FAMILY, TABLE]).stdout
        lines_by_comment = {
            m.group(1): line.strip()
            for line in text.splitlines()
            if (m := re.search(r'comment "([^"]*)"', line))
        }
        chains: dict[str, list[str]] = {}
        sets: dict[str, tuple[str, ...]] = {}
        sizes: dict[str, int] = {}
        rules: list[InstalledRule] = []
        for item in doc.get("nftables", []):
            if "chain" in item:
                chains.setdefault(f"{TABLE}/{item['chain']['name']}", [])
            elif "set" in item:
                name = item["set"]["name"]
                sets[name] = _normalize_elements(item["set"].get("elem", []), item["set"]["type"])
                sizes[name] = len(sets[name])  # same counting as the iptables backend
            elif "rule" in item:
                rule = item["rule"]
                comment = rule.get("comment", "")
                chains.setdefault(f"{TABLE}/{rule['chain']}", []).append(comment or "<no comment>")
                counter: dict[str, Any] = next(
                    (e["counter"] for e in rule["expr"] if "counter" in e), {}
                )
                rules.append(
                    InstalledRule(
                        table=f"{FAMILY} {TABLE}",
                        chain=rule["chain"],
                        text=_strip_counter(lines_by_comment.get(comment, "<unreadable>")),
                        comment=comment,
                        packets=int(counter.get("packets", 0)),
                        bytes=int(counter.get("bytes", 0)),
                    )
                )
        if loopback.ours(self.runner):
            sets[loopback.VIEW_KEY] = (f"{loopback.ADDRESS}/128",)
        view = View(
            tuple(sorted((k, tuple(v)) for k, v in chains.items())), tuple(sorted(sets.items()))
        )
        return Installed(self.name, tuple(rules), view, tuple(sorted(sizes.items())))

    def foreign_objects(self) -> list[str]:
        """Legacy-iptables sofamesh chains: present means the iptables backend owns this host."""
        return [f"legacy {f} nat table has SOFAMESH_ chains" for f in sofamesh_chains(self.runner)]

    def _table_exists(self) -> bool:
        result = self.runner.run(["nft", "list", "table", FAMILY, TABLE], check=False)
        return result.returncode == 0


def _render_set(spec: SetSpec) -> list[str]:
    lines = [
        f"\tset {spec.name} {{",
        f"\t\ttype {SET_TYPES[spec.kind]}",
        "\t\tflags interval",
    ]
    if spec.elements:
        lines.append(f"\t\telements = {{ {', '.join(spec.elements)} }}")
    lines.append("\t}")
    return lines


def _render_rule(rule: Rule) -> str:
    parts = _render_match(rule.match, rule.family)
    parts.append("counter")
    action = rule.action
    if isinstance(action, Return):
        parts.append("return")
    elif isinstance(action, Jump):
        parts.append(f"jump {action.chain}")
    elif isinstance(action, Redirect):
        parts.append(f"redirect to :{action.port}")
    parts.append(f'comment "{rule.comment}"')
    return " ".join(parts)


def _render_match(match: Match, family: int | None) -> list[str]:
    parts: list[str] = []
    addr_family = None
    for net in (match.src, match.dst):
        if net is not None:
            addr_family = "ip" if net.version == 4 else "ip6"
    if family is not None and addr_family is None and match.dst_set is None:
        parts.append(f"meta nfproto ipv{family}")
    if not match.dports and match.dport_set is None and not match.syn_only:
        parts.append("meta l4proto tcp")
    if match.syn_only:
        parts.append("tcp flags & (fin | syn | rst | ack) == syn")
    if match.out_lo:
        parts.append('oifname "lo"')
    if match.src is not None:
        parts.append(f"{addr_family} saddr {match.src}")
    if match.dst is not None:
        parts.append(f"{addr_family} daddr {'!= ' if match.dst_negate else ''}{match.dst}")
    if match.dst_set is not None:
        parts.append(f"{'ip6' if match.dst_set.endswith('6') else 'ip'} daddr @{match.dst_set}")
    if match.uid is not None:
        uid = match.uid if isinstance(match.uid, int) else f'"{match.uid}"'
        parts.append(f"meta skuid {'!= ' if match.uid_negate else ''}{uid}")
    if match.dst_not_local:
        parts.append("fib daddr type != local")
    if match.dports:
        parts.append(f"tcp dport {_ports(match.dports)}")
    if match.dport_set is not None:
        parts.append(f"tcp dport @{match.dport_set}")
    return parts


def _ports(ports: tuple[PortRange, ...]) -> str:
    if len(ports) == 1:
        return str(ports[0])
    return "{ " + ", ".join(map(str, ports)) + " }"


def _strip_counter(line: str) -> str:
    return re.sub(r" counter packets \d+ bytes \d+", " counter", line)


def _normalize_spec(spec: SetSpec) -> tuple[str, ...]:
    if spec.kind == "port":
        return normalize_ports(spec.ports)
    return normalize_networks(spec.networks)


def _normalize_elements(elems: list[Any], set_type: str) -> tuple[str, ...]:
    """nft's JSON elements (values, prefixes, ranges) back to canonical strings."""
    if set_type == "inet_service":
        ports = []
        for e in elems:
            if isinstance(e, dict) and "range" in e:
                ports.append(PortRange(int(e["range"][0]), int(e["range"][1])))
            else:
                ports.append(PortRange(int(e), int(e)))
        return normalize_ports(ports)
    nets: list[IPNetwork] = []
    for e in elems:
        if isinstance(e, dict) and "prefix" in e:
            nets.append(ipaddress.ip_network(f"{e['prefix']['addr']}/{e['prefix']['len']}"))
        elif isinstance(e, dict) and "range" in e:
            first, last = (ipaddress.ip_address(a) for a in e["range"])
            nets.extend(ipaddress.summarize_address_range(first, last))
        else:
            nets.append(ipaddress.ip_network(str(e)))
    return normalize_networks(nets)
