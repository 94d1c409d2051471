"""The facade through the recording seam: one nft transaction per apply, nothing run when
the kernel already holds the plan (R-HJ-6), mixing refused (R-HJ-5)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from hijack import engine
from hijack.backends.nftables import NftablesBackend
from hijack.command import RecordingRunner, Result
from hijack.config import HijackConfig
from hijack.errors import ApplyFailed, TagConflict

pytestmark = pytest.mark.unit

CONFIG = HijackConfig.parse({"proxy": {"user": 1337}, "ipv6": False})


def nft_host(installed_json: str | None, *, fail_apply: bool = False) -> RecordingRunner:
    def respond(argv: Sequence[str], stdin: str | None) -> Result:
        match list(argv):
            case ["nft", "-f", "-"]:
                return Result(
                    1 if fail_apply else 0, "", "Error: syntax error" if fail_apply else ""
                )
            case ["nft", "list", "table", "inet", "sofamesh"]:
                return Result(0 if installed_json else 1, "", "")
            case ["nft", "-j", "list", "table", "inet", "sofamesh"]:
                return Result(0, installed_json or "{}", "")
            case ["iptables", "--version"]:
                return Result(0, "iptables v1.8.9 (nf_tables)", "")
        return Result(0, '{"nftables": []}' if "-j" in argv else "", "")

    return RecordingRunner(responder=respond, present=frozenset({"nft", "iptables"}))


def as_installed_json(config: HijackConfig) -> str:
    """What `nft -j list table` would print right after applying config."""
    plan = engine.plan(config)
    items: list[dict[str, object]] = []
    for spec in plan.sets:
        items.append(
            {
                "set": {
                    "name": spec.name,
                    "type": {"ipv4": "ipv4_addr", "ipv6": "ipv6_addr", "port": "inet_service"}[
                        spec.kind
                    ],
                }
            }
        )
    for hook in plan.hooks:
        items.append({"chain": {"name": hook.hook}})
        items.append({"rule": {"chain": hook.hook, "comment": hook.rule.comment, "expr": []}})
    for chain in plan.chains:
        items.append({"chain": {"name": chain.name}})
        items += [
            {"rule": {"chain": chain.name, "comment": r.comment, "expr": []}} for r in chain.rules
        ]
    return json.dumps({"nftables": items})


def test_apply_loads_one_transaction() -> None:
    runner = nft_host(None)
    result = engine.apply(CONFIG, "nftables", runner)
    loads = [stdin for argv, stdin in runner.calls if argv == ["nft", "-f", "-"]]
    assert result.changed
    assert len(loads) == 1
    assert loads[0] == NftablesBackend(runner).render(result.plan)


def test_apply_of_what_is_installed_runs_no_change() -> None:
    runner = nft_host(as_installed_json(CONFIG))
    result = engine.apply(CONFIG, "nftables", runner)
    assert not result.changed
    assert not any(argv == ["nft", "-f", "-"] for argv, _ in runner.calls)


def test_a_different_installed_plan_is_replaced() -> None:
    old = HijackConfig.parse(
        {"proxy": {"user": 1337}, "ipv6": False, "inbound": {"redirect_port": 16006}}
    )
    runner = nft_host(as_installed_json(old))
    assert engine.apply(CONFIG, "nftables", runner).changed


def test_rejected_batch_is_reported_as_rolled_back() -> None:
    with pytest.raises(ApplyFailed, match="nothing changed"):
        engine.apply(CONFIG, "nftables", nft_host(None, fail_apply=True))


def test_legacy_sofamesh_chains_block_an_nftables_apply() -> None:
    base = nft_host(None)

    def respond(argv: Sequence[str], stdin: str | None) -> Result:
        if argv[0] == "iptables-legacy-save":
            return Result(0, "*nat\n:SOFAMESH_OUTPUT - [0:0]\nCOMMIT\n", "")
        return base.responder(argv, stdin)

    runner = RecordingRunner(
        responder=respond,
        present=frozenset({"nft", "iptables", "iptables-legacy-save"}),
        files={"/proc/net/ip_tables_names": "nat\n"},
    )
    with pytest.raises(TagConflict, match="legacy ip nat table has SOFAMESH_ chains"):
        engine.apply(CONFIG, "nftables", runner)
    assert not any(argv == ["nft", "-f", "-"] for argv, _ in runner.calls)
