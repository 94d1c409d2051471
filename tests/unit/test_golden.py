"""Golden files of the rendered plans, per backend and family (STYLE: rules are data).

Regenerate after an intended change with SOFAMESH_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from hijack.backends.iptables import IptablesBackend
from hijack.backends.nftables import NftablesBackend
from hijack.builder import build_plan
from hijack.command import RecordingRunner
from hijack.config import HijackConfig
from hijack.resolve import ConsoleTarget, ResolvedConfig

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parent / "golden"
BLACKLISTS = {
    "inbound": {"exclude_ports": ["8000-8100", 9090]},
    "outbound": {
        "exclude_cidrs": ["10.0.0.0/8", "192.168.0.0/16", "2001:db8:ffff::/48", "0.0.0.0/0"],
        "exclude_ports": [3306, "5432"],
    },
    "ssh_ports": [22, 2222],
    "console": ["203.0.113.10:8443"],
}


def resolved(doc: dict[str, object], *, ipv6: bool) -> ResolvedConfig:
    """A host-independent resolution: fixed uid, console address and IPv6 decision."""
    config = HijackConfig.parse(doc)
    console = tuple(ConsoleTarget(ipaddress.ip_address(c.host), c.port) for c in config.console)
    reason = "intercepted with the same rules as IPv4" if ipv6 else "disabled by config"
    return ResolvedConfig(config, 1337, "sofamesh-proxy", console, ipv6, reason)


CASES = {
    "defaults-dual": ({}, True),
    "defaults-v4": ({}, False),
    "blacklists-dual": (BLACKLISTS, True),
    "blacklists-v4": (BLACKLISTS, False),
}


@pytest.mark.parametrize(
    "backend_cls", [IptablesBackend, NftablesBackend], ids=["iptables", "nftables"]
)
@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_plan_matches_golden_file(backend_cls: type, case: str) -> None:
    doc, ipv6 = CASES[case]
    backend = backend_cls(RecordingRunner())
    text = backend.render(build_plan(resolved(doc, ipv6=ipv6)))
    path = GOLDEN / f"{backend.name}-{case}.txt"
    if os.environ.get("SOFAMESH_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}: run with SOFAMESH_UPDATE_GOLDEN=1"
    assert text == path.read_text()


def test_rendering_runs_no_command() -> None:
    runner = RecordingRunner()
    plan = build_plan(resolved(BLACKLISTS, ipv6=True))
    IptablesBackend(runner).render(plan)
    NftablesBackend(runner).render(plan)
    assert runner.calls == []


def test_v4_only_plan_has_no_v6_objects() -> None:
    plan = build_plan(resolved(BLACKLISTS, ipv6=False))
    nft = NftablesBackend(RecordingRunner()).render(plan)
    ipt = IptablesBackend(RecordingRunner()).render(plan)
    assert "ip6 " not in nft and "out_cidr6" not in nft
    syn_only = "tcp flags & (fin | syn | rst | ack) == syn"
    assert f"meta nfproto ipv4 {syn_only} counter jump inbound" in nft
    assert "ip6tables" not in ipt and "inet6" not in ipt


def test_changed_rule_changes_its_comment_and_the_digest() -> None:
    a = build_plan(resolved({}, ipv6=True))
    b = build_plan(resolved({"inbound": {"redirect_port": 16006}}, ipv6=True))
    backend = NftablesBackend(RecordingRunner())
    assert a.chain("in_redirect").rules[0].comment != b.chain("in_redirect").rules[0].comment
    assert backend.expected_view(a).digest != backend.expected_view(b).digest
    same = build_plan(resolved({}, ipv6=True))
    assert backend.expected_view(a).digest == backend.expected_view(same).digest


def test_every_rule_is_tagged_and_every_chain_prefixed() -> None:
    plan = build_plan(resolved(BLACKLISTS, ipv6=True))
    ipt = IptablesBackend(RecordingRunner()).render(plan)
    for line in ipt.splitlines():
        if line.startswith(("-A ", "-I ")):
            assert '--comment "sofamesh:' in line
            assert " -j " in line
        if line.startswith(":"):
            assert line.startswith(":SOFAMESH_")
