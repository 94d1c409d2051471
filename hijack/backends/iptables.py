"""iptables backend: python-iptables (libiptc) on hosts that use legacy iptables.

Each nat table (IPv4, IPv6) is changed in memory and written with one commit, which the
kernel swaps in whole. Every chain is prefixed SOFAMESH_ and every rule carries a
`sofamesh:<tag>:<hash>` comment, so remove() finds exactly what we installed (R-HJ-6).
Blacklists live in ipsets (ipset.py). If a later step fails, the nat tables and sets are
put back from a snapshot taken before the first change.
"""

from __future__ import annotations

from hijack.backends import ipset, libiptc, loopback
from hijack.backends.base import (
    PARK_COMMENT,
    PARK_PORT,
    Backend,
    normalize_networks,
    normalize_ports,
)
from hijack.backends.iptrule import IptRule, Param
from hijack.errors import ApplyFailed, CommandFailed, HijackError
from hijack.model import (
    PREFIX,
    ChainName,
    Family,
    Hook,
    Installed,
    InstalledRule,
    Jump,
    Plan,
    Redirect,
    Return,
    Rule,
    SetSpec,
    View,
)

CHAIN_NAMES: dict[ChainName, str] = {
    "inbound": "SOFAMESH_INBOUND",
    "in_redirect": "SOFAMESH_IN_REDIRECT",
    "outbound": "SOFAMESH_OUTPUT",
    "out_redirect": "SOFAMESH_OUT_REDIRECT",
}
HOOK_CHAINS: dict[Hook, str] = {"prerouting": "PREROUTING", "output": "OUTPUT"}
CHAIN_PREFIX = "SOFAMESH_"
SAVE = {4: "iptables-legacy-save", 6: "ip6tables-legacy-save"}
RESTORE = {4: "iptables-legacy-restore", 6: "ip6tables-legacy-restore"}
FAMILY_LABEL = {4: "ip", 6: "ip6"}
PARKED_RULE = IptRule(
    chain="SOFAMESH_PARKED",
    src=None,
    dst=None,
    out_iface=None,
    matches=(("comment", (("comment", PARK_COMMENT),)),),
    target="REDIRECT",
    target_params=(("to-ports", str(PARK_PORT)),),
)


def to_ipt(rule: Rule, chain: str) -> IptRule:
    m = rule.match
    matches: list[tuple[str, tuple[Param, ...]]] = []
    if m.uid is not None:
        matches.append(("owner", (("uid-owner", f"{'!' if m.uid_negate else ''}{m.uid}"),)))
    if m.dst_not_local:
        matches.append(("addrtype", (("dst-type", "!LOCAL"),)))
    if m.syn_only:
        matches.append(("tcp", (("tcp-flags", ("FIN,SYN,RST,ACK", "SYN")),)))
    if len(m.dports) == 1:
        matches.append(("tcp", (("dport", str(m.dports[0]).replace("-", ":")),)))
    elif m.dports:
        ports = ",".join(str(r).replace("-", ":") for r in m.dports)
        matches.append(("multiport", (("dports", ports),)))
    for set_name in (m.dst_set, m.dport_set):
        if set_name is not None:
            matches.append(("set", (("match-set", (ipset.kernel_name(set_name), "dst")),)))
    matches.append(("comment", (("comment", rule.comment),)))
    action = rule.action
    params: tuple[Param, ...] = ()
    if isinstance(action, Return):
        target = "RETURN"
    elif isinstance(action, Jump):
        target = CHAIN_NAMES[action.chain]
    else:
        assert isinstance(action, Redirect)
        target, params = "REDIRECT", (("to-ports", str(action.port)),)
    dst = None
    if m.dst is not None:
        dst = f"{'!' if m.dst_negate else ''}{m.dst}"
    return IptRule(
        chain=chain,
        src=str(m.src) if m.src is not None else None,
        dst=dst,
        out_iface="lo" if m.out_lo else None,
        matches=tuple(matches),
        target=target,
        target_params=params,
    )


def family_rules(plan: Plan, family: Family) -> tuple[list[IptRule], list[IptRule]]:
    """(our chains' rules in order, hook rules) for one family's nat table."""
    body = [
        to_ipt(rule, CHAIN_NAMES[chain.name])
        for chain in plan.chains
        for rule in chain.rules
        if rule.applies_to(family)
    ]
    hooks = [to_ipt(h.rule, HOOK_CHAINS[h.hook]) for h in plan.hooks if h.rule.applies_to(family)]
    return body, hooks


class IptablesBackend(Backend):
    name = "iptables"

    def unavailable_reason(self) -> str | None:
        for tool in ("ipset", SAVE[4], RESTORE[4]):
            if self.runner.which(tool) is None:
                return f"{tool} is missing (install the iptables and ipset packages)"
        try:
            libiptc.in_child(libiptc.probe)
        except HijackError as exc:
            return f"python-iptables cannot use legacy iptables here: {exc}"
        return None

    # -- render ---------------------------------------------------------------------------

    def render(self, plan: Plan) -> str:
        lines = ["# sofamesh iptables plan", *(f"# {note}" for note in plan.notes)]
        lines.append("# ipset restore: each set is filled aside, then swapped in")
        lines.append(ipset.restore_script(plan.sets, existing=set()).rstrip("\n"))
        for family in plan.families:
            body, hooks = family_rules(plan, family)
            tool = "iptables" if family == 4 else "ip6tables"
            lines.append(f"# {tool} (legacy, libiptc): one commit of the nat table")
            lines.append("*nat")
            lines += [f":{name} - [0:0]" for name in CHAIN_NAMES.values()]
            lines += [r.text().replace(f"-A {r.chain}", f"-I {r.chain} 1", 1) for r in hooks]
            lines += [r.text() for r in body]
            lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def expected_view(self, plan: Plan) -> View:
        chains: list[tuple[str, tuple[str, ...]]] = []
        for family in plan.families:
            label = FAMILY_LABEL[family]
            for hook, chain in HOOK_CHAINS.items():
                comments = tuple(
                    h.rule.comment
                    for h in plan.hooks
                    if h.hook == hook and h.rule.applies_to(family)
                )
                chains.append((f"{label}/nat/{chain}", comments))
            for c in plan.chains:
                comments = tuple(r.comment for r in c.rules if r.applies_to(family))
                chains.append((f"{label}/nat/{CHAIN_NAMES[c.name]}", comments))
        sets = [(ipset.kernel_name(s.name), _normalized(s)) for s in plan.sets]
        if 6 in plan.families:
            sets.append((loopback.VIEW_KEY, (f"{loopback.ADDRESS}/128",)))
        return View(tuple(sorted(chains)), tuple(sorted(sets)))

    # -- kernel ---------------------------------------------------------------------------

    def apply(self, plan: Plan) -> None:
        if 6 in plan.families:
            loopback.ensure(self.runner)
        existing_sets = ipset.list_sets(self.runner)
        live_sets = {n for n in existing_sets if not n.endswith(ipset.NEXT_SUFFIX)}
        set_snapshot = ipset.snapshot_script(self.runner, live_sets)
        table_snapshot: dict[Family, str] = {4: self._save(4), 6: self._save(6)}
        try:
            script = ipset.restore_script(plan.sets, existing_sets)
            self.runner.run(["ipset", "restore"], stdin=script)
            for family in (4, 6):
                body, hooks = family_rules(plan, family) if family in plan.families else ([], [])
                libiptc.in_child(libiptc.commit, family, body, hooks)
            self._destroy_sets(keep={ipset.kernel_name(s.name) for s in plan.sets})
        except HijackError as exc:
            self._rollback(table_snapshot, set_snapshot, live_sets)
            raise ApplyFailed(f"iptables apply failed and was rolled back: {exc}") from exc

    def remove(self, *, park: bool = False) -> bool:
        removed = False
        for family in (4, 6):
            body = [PARKED_RULE] if park else []
            removed |= libiptc.in_child(libiptc.commit, family, body, [])
        removed |= self._destroy_sets(keep=set())
        if not park:
            removed |= loopback.remove(self.runner)
        return removed

    def inspect(self) -> Installed:
        rules: list[InstalledRule] = []
        chains: dict[str, tuple[str, ...]] = {}
        for family in (4, 6):
            label = FAMILY_LABEL[family]
            for chain in libiptc.in_child(libiptc.read, family):
                if not chain.rules and not chain.ours:
                    continue
                key = f"{label}/nat/{chain.name}"
                chains[key] = tuple(r.comment or "<no comment>" for r in chain.rules)
                rules += [
                    InstalledRule(f"{label} nat", r.chain, r.text, r.comment, r.packets, r.bytes)
                    for r in chain.rules
                ]
        sets: dict[str, tuple[str, ...]] = {}
        sizes: dict[str, int] = {}
        for name in sorted(ipset.list_sets(self.runner)):
            header, items = ipset.save(self.runner, name)
            sets[name] = ipset.normalized(header, items)
            sizes[name] = len(sets[name])  # entries as configured (merged ranges, CIDRs)
        if loopback.ours(self.runner):
            sets[loopback.VIEW_KEY] = (f"{loopback.ADDRESS}/128",)
        view = View(tuple(sorted(chains.items())), tuple(sorted(sets.items())))
        return Installed(self.name, tuple(rules), view, tuple(sorted(sizes.items())))

    def foreign_objects(self) -> list[str]:
        if self.runner.which("nft") is None:
            return []
        result = self.runner.run(["nft", "list", "table", "inet", PREFIX], check=False)
        return ["nftables table inet sofamesh exists"] if result.returncode == 0 else []

    # -- helpers --------------------------------------------------------------------------

    def _save(self, family: Family) -> str:
        return self.runner.run([SAVE[family], "-t", "nat"], check=False).stdout

    def _rollback(self, tables: dict[Family, str], set_script: str, existing: set[str]) -> None:
        for family, dump in tables.items():
            if "*nat" in dump:
                self.runner.run([RESTORE[family], "-T", "nat"], stdin=dump, check=False)
            else:
                libiptc.in_child(libiptc.commit, family, [], [])
        self._destroy_sets(keep=existing)
        if set_script:
            self.runner.run(["ipset", "restore"], stdin=set_script, check=False)

    def _destroy_sets(self, keep: set[str]) -> bool:
        doomed = sorted(ipset.list_sets(self.runner) - keep)
        for name in doomed:
            try:
                self.runner.run(["ipset", "destroy", name])
            except CommandFailed as exc:
                raise HijackError(f"cannot destroy ipset {name}: {exc.stderr.strip()}") from exc
        return bool(doomed)


def _normalized(spec: SetSpec) -> tuple[str, ...]:
    if spec.kind == "port":
        return normalize_ports(spec.ports)
    return normalize_networks(spec.networks)
