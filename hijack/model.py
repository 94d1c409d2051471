"""Rules as data: the backend-neutral interception plan.

A Plan is built once from a ResolvedConfig (builder.py) and rendered by each backend. The
same Plan feeds dry-run output, golden files, apply and the expected view used for drift.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

from hijack.values import IPNetwork, PortRange

Family = Literal[4, 6]
SetKind = Literal["ipv4", "ipv6", "port"]
ChainName = Literal["inbound", "in_redirect", "outbound", "out_redirect"]
Hook = Literal["prerouting", "output"]

PREFIX = "sofamesh"


@dataclass(frozen=True)
class Return:
    """Stop processing our chains: the connection goes where it was going."""

    def __str__(self) -> str:
        return "return"


@dataclass(frozen=True)
class Jump:
    chain: ChainName

    def __str__(self) -> str:
        return f"jump {self.chain}"


@dataclass(frozen=True)
class Redirect:
    """Send the connection to a local port (NAT REDIRECT); SO_ORIGINAL_DST recovers it."""

    port: int

    def __str__(self) -> str:
        return f"redirect :{self.port}"


Action = Return | Jump | Redirect


@dataclass(frozen=True)
class Match:
    """Conditions ANDed together; unset fields match anything. All rules match TCP only."""

    out_lo: bool = False
    src: IPNetwork | None = None
    dst: IPNetwork | None = None
    dst_negate: bool = False
    uid: int | str | None = None
    uid_negate: bool = False
    dst_not_local: bool = False
    dports: tuple[PortRange, ...] = ()
    dst_set: str | None = None
    dport_set: str | None = None
    # Only a connection's first packet (SYN without ACK/RST/FIN). Where conntrack was not
    # running before our rules, the kernel picks up connections that were already open
    # mid-stream as "new"; without this, their next packet would be redirected to the
    # sidecar, which knows nothing of them, and they would be reset.
    syn_only: bool = False

    def describe(self) -> str:
        parts = []
        if self.syn_only:
            parts.append("syn")
        if self.out_lo:
            parts.append("out lo")
        if self.src is not None:
            parts.append(f"src {self.src}")
        if self.dst is not None:
            parts.append(f"dst {'!= ' if self.dst_negate else ''}{self.dst}")
        if self.uid is not None:
            parts.append(f"uid {'!= ' if self.uid_negate else ''}{self.uid}")
        if self.dst_not_local:
            parts.append("dst not local")
        if self.dports:
            parts.append("dport " + ",".join(map(str, self.dports)))
        if self.dst_set:
            parts.append(f"dst in @{self.dst_set}")
        if self.dport_set:
            parts.append(f"dport in @{self.dport_set}")
        return " ".join(parts) or "any"


@dataclass(frozen=True)
class Rule:
    """One rule. `tag` is stable across versions; the comment adds a hash of the spec so a
    changed rule never passes for the old one in drift checks."""

    tag: str
    why: str
    match: Match
    action: Action
    family: Family | None = None  # None: both families

    @property
    def spec(self) -> str:
        return f"{self.match.describe()} -> {self.action}"

    @property
    def comment(self) -> str:
        digest = hashlib.sha256(f"{self.family}|{self.spec}".encode()).hexdigest()[:8]
        return f"{PREFIX}:{self.tag}:{digest}"

    def applies_to(self, family: Family) -> bool:
        return self.family in (None, family)


@dataclass(frozen=True)
class Chain:
    name: ChainName
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class HookRule:
    """The jump from a built-in hook (nat PREROUTING / OUTPUT) into one of our chains."""

    hook: Hook
    rule: Rule


@dataclass(frozen=True)
class SetSpec:
    name: str
    kind: SetKind
    networks: tuple[IPNetwork, ...] = ()
    ports: tuple[PortRange, ...] = ()

    @property
    def elements(self) -> tuple[str, ...]:
        return tuple(map(str, self.networks if self.kind != "port" else self.ports))


@dataclass(frozen=True)
class Plan:
    """Everything one apply installs, for the families in `families`."""

    families: tuple[Family, ...]
    hooks: tuple[HookRule, ...]
    chains: tuple[Chain, ...]
    sets: tuple[SetSpec, ...]
    # Facts worth showing next to the rules (IPv6 decision, proxy uid...).
    notes: tuple[str, ...] = field(default=())
    config_document: str = ""

    def chain(self, name: ChainName) -> Chain:
        return next(c for c in self.chains if c.name == name)

    def set(self, name: str) -> SetSpec:
        return next(s for s in self.sets if s.name == name)


@dataclass(frozen=True)
class View:
    """What a backend sees installed (or expects to see): comparable, hashable, digestible.

    chains maps "<table>/<chain>" to the ordered rule comments; sets maps a set name to its
    sorted elements. Counters are not part of it: they change all the time.
    """

    chains: tuple[tuple[str, tuple[str, ...]], ...]
    sets: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def digest(self) -> str:
        doc = {"chains": dict(self.chains), "sets": dict(self.sets)}
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()

    @property
    def empty(self) -> bool:
        return not self.chains and not self.sets

    def diff(self, installed: View) -> list[str]:
        """Human-readable differences, `self` being desired and `installed` actual."""
        out: list[str] = []
        want, have = dict(self.chains), dict(installed.chains)
        for name in sorted(want.keys() | have.keys()):
            w, h = want.get(name), have.get(name)
            if w == h:
                continue
            if h is None:
                out.append(f"chain {name} missing")
            elif w is None:
                out.append(f"chain {name} not expected")
            else:
                missing = [c for c in w if c not in h]
                extra = [c for c in h if c not in w]
                out += [f"{name}: missing rule {c}" for c in missing]
                out += [f"{name}: unexpected rule {c}" for c in extra]
                if not missing and not extra:
                    out.append(f"{name}: rules out of order")
        wsets, hsets = dict(self.sets), dict(installed.sets)
        for name in sorted(wsets.keys() | hsets.keys()):
            ws, hs = wsets.get(name), hsets.get(name)
            if ws == hs:
                continue
            if hs is None:
                out.append(f"set {name} missing")
            elif ws is None:
                out.append(f"set {name} not expected")
            else:
                gone, added = sorted(set(ws) - set(hs)), sorted(set(hs) - set(ws))
                out.append(f"set {name}: {len(gone)} element(s) missing, {len(added)} unexpected")
        return out


@dataclass(frozen=True)
class InstalledRule:
    """One rule as read back from the kernel, with its counters."""

    table: str
    chain: str
    text: str
    comment: str
    packets: int
    bytes: int


@dataclass(frozen=True)
class Installed:
    """The result of Backend.inspect()."""

    backend: str
    rules: tuple[InstalledRule, ...]
    view: View
    set_sizes: tuple[tuple[str, int], ...] = ()

    @property
    def digest(self) -> str:
        return self.view.digest
