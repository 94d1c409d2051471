"""Backend auto-detection the way Istio and Kuma do it, through the command seam (R-HJ-5)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from hijack.command import RecordingRunner, Result
from hijack.detect import choose, preferred
from hijack.errors import BackendUnavailable

pytestmark = pytest.mark.unit

LEGACY_DUMP = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 22 -j ACCEPT\nCOMMIT\n"
NFT_RULES = json.dumps(
    {"nftables": [{"table": {"name": "filter"}}, {"rule": {"table": "filter", "chain": "input"}}]}
)


def host(
    *,
    legacy: str = "",
    nft: str = '{"nftables": []}',
    version: str = "iptables v1.8.9 (nf_tables)",
    sofamesh_nft: bool = False,
    present: frozenset[str] = frozenset(
        {
            "nft",
            "ipset",
            "iptables",
            "iptables-legacy-save",
            "ip6tables-legacy-save",
            "iptables-legacy-restore",
        }
    ),
) -> RecordingRunner:
    def respond(argv: Sequence[str], stdin: str | None) -> Result:
        match list(argv):
            case ["iptables-legacy-save", *_]:
                return Result(0, legacy, "")
            case ["ip6tables-legacy-save", *_]:
                return Result(0, "", "")
            case ["nft", "-j", "list", "ruleset"]:
                return Result(0, nft, "")
            case ["nft", "list", "table", "inet", "sofamesh"]:
                return Result(0 if sofamesh_nft else 1, "", "")
            case ["iptables", "--version"]:
                return Result(0, version + "\n", "")
            case ["ipset", "list", "-n"]:
                return Result(0, "", "")
        return Result(0, "", "")

    files = {"/proc/net/ip_tables_names": "nat\nfilter\n"} if legacy else {}
    return RecordingRunner(responder=respond, present=present, files=files)


def test_legacy_rules_only_pick_iptables() -> None:
    name, why = preferred(host(legacy=LEGACY_DUMP))
    assert name == "iptables"
    assert "1 legacy iptables rules" in why


def test_nft_rules_only_pick_nftables() -> None:
    name, why = preferred(host(nft=NFT_RULES, version="iptables v1.8.9 (legacy)"))
    assert name == "nftables"
    assert "1 nftables rules" in why


def test_no_rules_follow_the_hosts_iptables_command() -> None:
    assert preferred(host(version="iptables v1.8.9 (legacy)"))[0] == "iptables"
    assert preferred(host(version="iptables v1.8.9 (nf_tables)"))[0] == "nftables"


def test_no_iptables_command_means_nftables() -> None:
    assert preferred(host(present=frozenset({"nft"})))[0] == "nftables"


def test_installed_sofamesh_rules_win() -> None:
    name, why = preferred(host(legacy=LEGACY_DUMP, sofamesh_nft=True))
    assert name == "nftables"
    assert "already installed" in why


def test_legacy_tables_not_loaded_are_not_read() -> None:
    runner = host()
    preferred(runner)
    assert not any(argv[0].endswith("legacy-save") for argv, _ in runner.calls)


def test_explicit_backend_that_cannot_run_is_refused_with_the_reason() -> None:
    runner = host(present=frozenset({"iptables"}))
    with pytest.raises(BackendUnavailable, match="nft command is missing"):
        choose("nftables", runner)
