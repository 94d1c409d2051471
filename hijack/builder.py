"""Build the interception Plan from a ResolvedConfig (R-HJ-1..4, R-HJ-9).

The rule order follows Istio's istio-iptables, adapted: the sidecar reaches a local app from
127.0.0.6 (passed untouched); the sidecar's own connections to the node's own addresses go
through the inbound chain, so app A -> node IP -> app B is metered once outbound and once
inbound (R-HJ-4); everything else the sidecar sends goes direct (loop guard).
"""

from __future__ import annotations

import ipaddress
import json

from hijack.config import INTERCEPTED_PORTS
from hijack.model import (
    Chain,
    Family,
    HookRule,
    Jump,
    Match,
    Plan,
    Redirect,
    Return,
    Rule,
    SetSpec,
)
from hijack.resolve import ResolvedConfig
from hijack.values import PortRange

# The source address the sidecar binds when it connects to a local app (as Istio does).
SIDECAR_SOURCE = {4: ipaddress.ip_network("127.0.0.6/32"), 6: ipaddress.ip_network("::6/128")}
LOOPBACK = {4: ipaddress.ip_network("127.0.0.0/8"), 6: ipaddress.ip_network("::1/128")}

SET_OUT_CIDR = {4: "out_cidr4", 6: "out_cidr6"}
SET_OUT_PORTS = "out_ports"
SET_IN_PORTS = "in_ports"


def build_plan(resolved: ResolvedConfig) -> Plan:
    config = resolved.config
    families: tuple[Family, ...] = (4, 6) if resolved.ipv6 else (4,)
    both: Family | None = None if resolved.ipv6 else 4
    proxy = resolved.proxy_uid if resolved.proxy_uid is not None else resolved.proxy_user_label
    ssh = _ranges(config.ssh_ports)
    proxy_ports = _ranges(config.proxy_ports)

    inbound = Chain(
        "inbound",
        (
            Rule(
                "in-not-local",
                "only connections to this node's own addresses",
                Match(dst_not_local=True),
                Return(),
            ),
            Rule("in-ssh", "SSH is never intercepted (R-SF-1)", Match(dports=ssh), Return()),
            Rule("in-proxy-ports", "the sidecar's own ports", Match(dports=proxy_ports), Return()),
            Rule(
                "in-excluded-ports",
                "inbound port blacklist (R-HJ-1)",
                Match(dport_set=SET_IN_PORTS),
                Return(),
            ),
            Rule(
                "in-intercept",
                "port 80 and ports above 1024",
                Match(dports=INTERCEPTED_PORTS),
                Jump("in_redirect"),
            ),
        ),
    )
    in_redirect = Chain(
        "in_redirect",
        (
            Rule(
                "in-redirect",
                "to the sidecar's inbound listener",
                Match(),
                Redirect(config.inbound_redirect_port),
            ),
        ),
    )

    outbound: list[Rule] = []
    for fam in families:
        outbound.append(
            Rule(
                f"out-sidecar-to-app{fam}",
                "the sidecar calling a local app from its own source",
                Match(out_lo=True, src=SIDECAR_SOURCE[fam]),
                Return(),
                fam,
            )
        )
    for fam in families:
        outbound.append(
            Rule(
                f"out-proxy-to-local{fam}",
                "sidecar to this node's own IP: meter it inbound (R-HJ-4)",
                Match(out_lo=True, uid=proxy, dst=LOOPBACK[fam], dst_negate=True),
                Jump("inbound"),
                fam,
            )
        )
    outbound.append(
        Rule(
            "out-proxy",
            "the sidecar's own traffic goes direct (loop guard)",
            Match(uid=proxy),
            Return(),
        )
    )
    for fam in families:
        outbound.append(
            Rule(
                f"out-loopback{fam}",
                "loopback destinations go direct",
                Match(dst=LOOPBACK[fam]),
                Return(),
                fam,
            )
        )
    for i, target in enumerate(resolved.console):
        net = ipaddress.ip_network(target.address)
        if net.version in families:
            outbound.append(
                Rule(
                    f"out-console{i}",
                    "the agent's link to the console",
                    Match(dst=net, dports=(PortRange(target.port, target.port),)),
                    Return(),
                    4 if net.version == 4 else 6,
                )
            )
    outbound += [
        Rule("out-ssh", "SSH is never intercepted (R-SF-1)", Match(dports=ssh), Return()),
        Rule("out-proxy-ports", "the sidecar's own ports", Match(dports=proxy_ports), Return()),
    ]
    for fam in families:
        outbound.append(
            Rule(
                f"out-excluded-cidrs{fam}",
                "outbound CIDR blacklist (R-HJ-2)",
                Match(dst_set=SET_OUT_CIDR[fam]),
                Return(),
                fam,
            )
        )
    outbound += [
        Rule(
            "out-excluded-ports",
            "outbound port blacklist (R-HJ-2)",
            Match(dport_set=SET_OUT_PORTS),
            Return(),
        ),
        Rule(
            "out-intercept",
            "port 80 and ports above 1024",
            Match(dports=INTERCEPTED_PORTS),
            Jump("out_redirect"),
        ),
    ]
    out_redirect = Chain(
        "out_redirect",
        (
            Rule(
                "out-redirect",
                "to the sidecar's outbound listener",
                Match(),
                Redirect(config.outbound_redirect_port),
            ),
        ),
    )

    hooks = (
        HookRule(
            "prerouting",
            Rule(
                "hook-inbound",
                "new inbound TCP connections to our chain",
                Match(syn_only=True),
                Jump("inbound"),
                both,
            ),
        ),
        HookRule(
            "output",
            Rule(
                "hook-outbound",
                "new locally opened TCP connections to our chain",
                Match(syn_only=True),
                Jump("outbound"),
                both,
            ),
        ),
    )
    sets = [SetSpec(SET_OUT_CIDR[4], "ipv4", networks=config.outbound_exclude_cidrs4)]
    if 6 in families:
        sets.append(SetSpec(SET_OUT_CIDR[6], "ipv6", networks=config.outbound_exclude_cidrs6))
    sets += [
        SetSpec(SET_OUT_PORTS, "port", ports=config.outbound_exclude_ports),
        SetSpec(SET_IN_PORTS, "port", ports=config.inbound_exclude_ports),
    ]
    notes = (
        f"proxy user: {resolved.proxy_user_label}"
        + (
            f" (uid {resolved.proxy_uid})"
            if resolved.proxy_uid is not None
            else " (not yet created)"
        ),
        f"ipv6: {resolved.ipv6_reason}",
    )
    return Plan(
        families=families,
        hooks=hooks,
        chains=(inbound, in_redirect, Chain("outbound", tuple(outbound)), out_redirect),
        sets=tuple(sets),
        notes=notes,
        config_document=json.dumps(config.to_document(), sort_keys=True),
    )


def _ranges(ports: tuple[int, ...]) -> tuple[PortRange, ...]:
    return tuple(PortRange(p, p) for p in ports)
