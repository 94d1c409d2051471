"""Pick the backend the host uses, the way Istio and Kuma do, and never mix the two.

Order: (1) if sofamesh rules are already installed, stay with that backend; (2) count
rules in legacy iptables and in nftables (iptables-nft rules live in nftables): the variant
with rules is the one the host uses; (3) with no rules anywhere, follow what the host's
`iptables` command is (`iptables --version` says "legacy" or "nf_tables"); (4) if the chosen
backend cannot run here, fall back to the other and say why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hijack.backends import legacy as legacy_tables
from hijack.backends.base import Backend
from hijack.backends.iptables import IptablesBackend
from hijack.backends.nftables import TABLE, NftablesBackend
from hijack.command import Runner
from hijack.errors import BackendUnavailable, ConfigError

BACKENDS: dict[str, type[Backend]] = {"iptables": IptablesBackend, "nftables": NftablesBackend}
CHOICES = ("auto", *BACKENDS)


@dataclass(frozen=True)
class Choice:
    backend: Backend
    reason: str


def make_backend(name: str, runner: Runner) -> Backend:
    try:
        return BACKENDS[name](runner)
    except KeyError:
        raise ConfigError(
            "backend", f"unknown backend {name!r} (choose from {', '.join(CHOICES)})"
        ) from None


def choose(requested: str, runner: Runner) -> Choice:
    """Resolve `auto` (or check an explicit choice) against this host."""
    if requested != "auto":
        backend = make_backend(requested, runner)
        reason = backend.unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(f"backend {requested} cannot run here: {reason}")
        return Choice(backend, f"{requested} requested explicitly")
    name, why = preferred(runner)
    backend = make_backend(name, runner)
    reason = backend.unavailable_reason()
    if reason is None:
        return Choice(backend, why)
    other = make_backend("iptables" if name == "nftables" else "nftables", runner)
    other_reason = other.unavailable_reason()
    if other_reason is None:
        return Choice(other, f"{why}, but {name} cannot run here ({reason}): using {other.name}")
    raise BackendUnavailable(
        f"no backend can run here: {name}: {reason}; {other.name}: {other_reason}"
    )


def installed_backends(runner: Runner) -> list[str]:
    """Backends that have sofamesh objects in the kernel right now."""
    found = []
    if legacy_sofamesh_present(runner):
        found.append("iptables")
    if (
        runner.which("nft")
        and runner.run(["nft", "list", "table", "inet", TABLE], check=False).returncode == 0
    ):
        found.append("nftables")
    return found


def legacy_sofamesh_present(runner: Runner) -> bool:
    if legacy_tables.sofamesh_chains(runner):
        return True
    ipsets = (
        runner.run(["ipset", "list", "-n"], check=False).stdout if runner.which("ipset") else ""
    )
    return any(n.startswith("sofamesh-") for n in ipsets.split())


def preferred(runner: Runner) -> tuple[str, str]:
    installed = installed_backends(runner)
    if len(installed) == 1:
        return installed[0], f"sofamesh rules are already installed with {installed[0]}"
    legacy = sum(
        line.startswith("-A ")
        for dump in legacy_tables.legacy_dumps(runner).values()
        for line in dump.splitlines()
    )
    nft = _nft_rule_count(runner)
    if legacy and not nft:
        return "iptables", f"the host has {legacy} legacy iptables rules and no nftables rules"
    if nft and not legacy:
        return "nftables", f"the host has {nft} nftables rules and no legacy iptables rules"
    if legacy and nft:
        name = "iptables" if legacy > nft else "nftables"
        return name, f"the host has {legacy} legacy and {nft} nftables rules; the larger set wins"
    if runner.which("iptables"):
        version = runner.run(["iptables", "--version"], check=False).stdout
        if "legacy" in version:
            return "iptables", f"no rules yet; the host's iptables is legacy ({version.strip()})"
        if "nf_tables" in version:
            return "nftables", f"no rules yet; the host's iptables is nft-based ({version.strip()})"
    return "nftables", "no rules yet and no iptables command: nftables is the kernel's native API"


def _nft_rule_count(runner: Runner) -> int:
    if not runner.which("nft"):
        return 0
    result = runner.run(["nft", "-j", "list", "ruleset"], check=False)
    if result.returncode != 0 or not result.stdout.strip():
        return 0
    items = json.loads(result.stdout).get("nftables", [])
    return sum(1 for i in items if "rule" in i and i["rule"].get("table") != TABLE)
