"""What the eBPF backend keeps in its maps, built from a Plan or read back from the kernel.

One decoding path for both sides: the plan is first encoded into the exact map contents
apply would write, and the view (rules with tags, sets, links, sockets) is derived from
map contents, whether those came from the plan or from the kernel. So a value changed in
the kernel by hand shows up as drift, and the digest means the same thing as for the
netfilter backends.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import itertools
import struct
from dataclasses import dataclass

from hijack.backends import loopback
from hijack.backends.base import normalize_networks, normalize_ports
from hijack.builder import SET_IN_PORTS, SET_OUT_CIDR, SET_OUT_PORTS
from hijack.errors import ConfigError
from hijack.model import PREFIX, Plan, Redirect, View
from hijack.values import PortRange

PORTS = 65536
UNKNOWN_UID = 2**32 - 1
MAX_CIDRS_PER_FAMILY = 65536
SETTINGS = struct.Struct("=IIIIHHI")
CONSOLE_KEY = struct.Struct("=16sHH")

CLASS_DIRECT, CLASS_SSH, CLASS_PROXY, CLASS_EXCLUDED, CLASS_INTERCEPT = range(5)
# direction index inside a port's two class bytes
IN, OUT = 0, 1


@dataclass(frozen=True)
class Settings:
    enabled: bool
    proxy_uid: int
    ipv6: bool
    in_port: int
    out_port: int

    def pack(self, generation: int) -> bytes:
        return SETTINGS.pack(
            int(self.enabled), generation, self.proxy_uid, int(self.ipv6), self.in_port,
            self.out_port, 0,
        )  # fmt: skip

    @classmethod
    def unpack(cls, raw: bytes) -> tuple[Settings, int]:
        enabled, generation, uid, ipv6, in_port, out_port, _ = SETTINGS.unpack(raw)
        return cls(bool(enabled), uid, bool(ipv6), in_port, out_port), generation & 1


@dataclass(frozen=True)
class Contents:
    """The live half of every map, as apply writes it."""

    settings: Settings
    classes: bytes  # PORTS * 2 bytes: (inbound class, outbound class) per port
    cidr4: tuple[ipaddress.IPv4Network, ...]
    cidr6: tuple[ipaddress.IPv6Network, ...]
    console: tuple[tuple[str, int], ...]  # (address, port), sorted

    @classmethod
    def from_plan(cls, plan: Plan, *, dry_run: bool = False) -> Contents:
        """With dry_run, a proxy user that does not exist yet shows as uid 4294967295
        (render says so); apply needs the real uid, which lives in the settings map."""
        inbound = {r.tag: r for r in plan.chain("inbound").rules}
        outbound = {r.tag: r for r in plan.chain("outbound").rules}
        uid = outbound["out-proxy"].match.uid
        if not isinstance(uid, int):
            if not dry_run:
                raise ConfigError("proxy.user", f"user {uid!r} has no uid yet: create it first")
            uid = UNKNOWN_UID
        in_redirect = plan.chain("in_redirect").rules[0].action
        out_redirect = plan.chain("out_redirect").rules[0].action
        assert isinstance(in_redirect, Redirect) and isinstance(out_redirect, Redirect)
        classes = bytearray(PORTS * 2)
        layers = (
            (CLASS_INTERCEPT, inbound["in-intercept"].match.dports, IN),
            (CLASS_INTERCEPT, outbound["out-intercept"].match.dports, OUT),
            (CLASS_EXCLUDED, plan.set(SET_IN_PORTS).ports, IN),
            (CLASS_EXCLUDED, plan.set(SET_OUT_PORTS).ports, OUT),
            (CLASS_PROXY, inbound["in-proxy-ports"].match.dports, IN),
            (CLASS_PROXY, outbound["out-proxy-ports"].match.dports, OUT),
            (CLASS_SSH, inbound["in-ssh"].match.dports, IN),
            (CLASS_SSH, outbound["out-ssh"].match.dports, OUT),
        )
        for cls_, ranges, direction in layers:  # later layers win, as earlier rules do
            for r in ranges:
                for port in range(r.first, r.last + 1):
                    classes[port * 2 + direction] = cls_
        cidr4 = tuple(
            n for n in plan.set(SET_OUT_CIDR[4]).networks if isinstance(n, ipaddress.IPv4Network)
        )
        cidr6: tuple[ipaddress.IPv6Network, ...] = ()
        if 6 in plan.families:
            cidr6 = tuple(
                n
                for n in plan.set(SET_OUT_CIDR[6]).networks
                if isinstance(n, ipaddress.IPv6Network)
            )
        for fam, nets in ((4, cidr4), (6, cidr6)):
            if len(nets) > MAX_CIDRS_PER_FAMILY:
                raise ConfigError(
                    "outbound.exclude_cidrs",
                    f"{len(nets)} IPv{fam} prefixes; the eBPF backend takes at most "
                    f"{MAX_CIDRS_PER_FAMILY} per family",
                )
        console = sorted(
            (str(r.match.dst.network_address), r.match.dports[0].first)
            for tag, r in outbound.items()
            if tag.startswith("out-console") and r.match.dst is not None
        )
        settings = Settings(True, uid, 6 in plan.families, in_redirect.port, out_redirect.port)
        return cls(settings, bytes(classes), cidr4, cidr6, tuple(console))

    def ranges(self, cls_: int, direction: int) -> tuple[PortRange, ...]:
        return self._runs.get((cls_, direction), ())

    @functools.cached_property
    def _runs(self) -> dict[tuple[int, int], tuple[PortRange, ...]]:
        """Port ranges per (class, direction), from one pass over each direction."""
        runs: dict[tuple[int, int], list[PortRange]] = {}
        for direction in (IN, OUT):
            port = 0
            for cls_, group in itertools.groupby(self.classes[direction::2]):
                width = sum(1 for _ in group)
                runs.setdefault((cls_, direction), []).append(PortRange(port, port + width - 1))
                port += width
        return {key: tuple(value) for key, value in runs.items()}


@dataclass(frozen=True)
class RuleInfo:
    tag: str
    chain: str
    spec: str
    slot: int  # hit counter slot in the `hits` map (see sofamesh.bpf.c)

    @property
    def comment(self) -> str:
        digest = hashlib.sha256(f"ebpf|{self.chain}|{self.spec}".encode()).hexdigest()[:8]
        return f"{PREFIX}:{self.tag}:{digest}"


def _ports(ranges: tuple[PortRange, ...]) -> str:
    return ",".join(map(str, ranges)) or "none"


def rules(c: Contents) -> list[RuleInfo]:
    """The rules the programs implement with these map contents, in evaluation order."""
    s = c.settings
    fams = "ipv4,ipv6" if s.ipv6 else "ipv4 only"
    console = ",".join(f"{a}:{p}" for a, p in c.console) or "none"
    return [
        RuleInfo("in-loopback", "inbound", "dst 127.0.0.0/8,::1 -> pass", 0),
        RuleInfo("in-sidecar-source", "inbound", "src 127.0.0.6,::6 -> pass", 1),
        RuleInfo("in-ssh", "inbound", f"dport {_ports(c.ranges(CLASS_SSH, IN))} -> pass", 2),
        RuleInfo(
            "in-proxy-ports", "inbound", f"dport {_ports(c.ranges(CLASS_PROXY, IN))} -> pass", 3
        ),
        RuleInfo("in-excluded-ports", "inbound", f"dport in @{SET_IN_PORTS} -> pass", 4),
        RuleInfo(
            "in-intercept",
            "inbound",
            f"dport {_ports(c.ranges(CLASS_INTERCEPT, IN))} ({fams}) -> sidecar socket",
            5,
        ),
        RuleInfo("in-fail-open", "inbound", "no sidecar socket -> pass to the app", 7),
        RuleInfo("out-proxy", "outbound", f"uid {s.proxy_uid} -> direct", 8),
        RuleInfo("out-loopback", "outbound", "dst 127.0.0.0/8,::1 -> direct", 9),
        RuleInfo("out-console", "outbound", f"dst {console} -> direct", 10),
        RuleInfo("out-ssh", "outbound", f"dport {_ports(c.ranges(CLASS_SSH, OUT))} -> direct", 11),
        RuleInfo(
            "out-proxy-ports",
            "outbound",
            f"dport {_ports(c.ranges(CLASS_PROXY, OUT))} -> direct",
            12,
        ),
        RuleInfo(
            "out-excluded-cidrs",
            "outbound",
            f"dst in @{SET_OUT_CIDR[4]},@{SET_OUT_CIDR[6]} -> direct",
            13,
        ),
        RuleInfo("out-excluded-ports", "outbound", f"dport in @{SET_OUT_PORTS} -> direct", 14),
        RuleInfo(
            "out-intercept",
            "outbound",
            f"dport {_ports(c.ranges(CLASS_INTERCEPT, OUT))} ({fams})",
            15,
        ),
        RuleInfo(
            "out-redirect", "outbound", f"-> 127.0.0.1/[::1]:{s.out_port}, origin recorded", 16
        ),
        RuleInfo("out-fail-open", "outbound", f"nothing listens on :{s.out_port} -> direct", 17),
    ]


def redirect_rules(c: Contents, slots: tuple[int, ...]) -> list[RuleInfo]:
    """One rule per registered sidecar socket (slot 0: IPv4, slot 1: IPv6)."""
    out = []
    for slot in slots:
        suffix = "" if slot == 0 else "6"
        out.append(
            RuleInfo(
                f"in-redirect{suffix}",
                "in_redirect",
                f"assign the sidecar socket on :{c.settings.in_port} (ipv{4 if slot == 0 else 6})",
                6,
            )
        )
    return out


@dataclass(frozen=True)
class Observed:
    """Everything the view is made of: map contents plus what holds them in place."""

    contents: Contents
    links: tuple[str, ...]  # names of attached programs
    sockets: tuple[int, ...]  # registered sidecar socket slots
    version: int
    loopback6: bool

    def view(self) -> View:
        c = self.contents
        chains: list[tuple[str, tuple[str, ...]]] = [
            (
                "ebpf/links",
                tuple(
                    f"{PREFIX}:link-{name}:{self.version & 0xFFFFFFFF:08x}"
                    for name in sorted(self.links)
                ),
            )
        ]
        live = [r for r in rules(c)] if c.settings.enabled else []
        for chain in ("inbound", "outbound"):
            chains.append((f"ebpf/{chain}", tuple(r.comment for r in live if r.chain == chain)))
        chains.append(
            ("ebpf/in_redirect", tuple(r.comment for r in redirect_rules(c, self.sockets)))
        )
        sets = [
            (SET_IN_PORTS, normalize_ports(c.ranges(CLASS_EXCLUDED, IN))),
            (SET_OUT_PORTS, normalize_ports(c.ranges(CLASS_EXCLUDED, OUT))),
            (SET_OUT_CIDR[4], normalize_networks(c.cidr4)),
        ]
        if c.settings.ipv6:
            sets.append((SET_OUT_CIDR[6], normalize_networks(c.cidr6)))
        if self.loopback6:
            sets.append((loopback.VIEW_KEY, (f"{loopback.ADDRESS}/128",)))
        return View(tuple(sorted(chains)), tuple(sorted(sets)))


def cidr_key(net: ipaddress.IPv4Network | ipaddress.IPv6Network, generation: int) -> bytes:
    """LPM key: prefix length (generation byte included), generation, address bytes."""
    fmt = "=IB4s" if net.version == 4 else "=IB16s"
    return struct.pack(fmt, 8 + net.prefixlen, generation, net.network_address.packed)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_cidr_key(raw: bytes, family: int) -> tuple[int, Network]:
    fmt = "=IB4s" if family == 4 else "=IB16s"
    plen, generation, addr = struct.unpack(fmt, raw)
    net = ipaddress.ip_network((ipaddress.ip_address(addr), plen - 8))
    return generation, net


def console_key(address: str, port: int) -> bytes:
    ip = ipaddress.ip_address(address)
    packed = ip.packed if ip.version == 6 else b"\0" * 10 + b"\xff\xff" + ip.packed
    return CONSOLE_KEY.pack(packed, port, 0)


def parse_console_key(raw: bytes) -> tuple[str, int]:
    packed, port, _ = CONSOLE_KEY.unpack(raw)
    ip = ipaddress.IPv6Address(packed)
    return (str(ip.ipv4_mapped) if ip.ipv4_mapped else str(ip)), port
