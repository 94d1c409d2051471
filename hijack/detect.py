"""Pick the backend the host uses, the way Istio and Kuma do, and never mix the two.

Order: (1) if sofamesh rules (or pinned eBPF programs) are already installed, stay with that
backend; (2) eBPF when the kernel, BTF, headers and bcc allow it and a probe load of the
programs works (and, inside a network namespace, only with an explicit cgroup: cgroup hooks
reach every namespace); (3) count
rules in legacy iptables and in nftables (iptables-nft rules live in nftables): the variant
with rules is the one the host uses; (3) with no rules anywhere, follow what the host's
`iptables` command is (`iptables --version` says "legacy" or "nf_tables"); (5) if the chosen
backend cannot run here, fall back to the other and say why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hijack.backends import legacy as legacy_tables
from hijack.backends.base import Backend
from hijack.backends.ebpf import EbpfBackend, EbpfOptions, in_initial_netns
from hijack.backends.iptables import IptablesBackend
from hijack.backends.nftables import TABLE, NftablesBackend
from hijack.command import Runner
from hijack.errors import BackendUnavailable, ConfigError

BACKENDS: dict[str, type[Backend]] = {
    "iptables": IptablesBackend,
    "nftables": NftablesBackend,
    "ebpf": EbpfBackend,
}
CHOICES = ("auto", *BACKENDS)
NETFILTER = ("iptables", "nftables")


@dataclass(frozen=True)
class Choice:
    backend: Backend
    reason: str


def make_backend(name: str, runner: Runner, options: EbpfOptions | None = None) -> Backend:
    if name == "ebpf":
        return EbpfBackend(runner, options)
    try:
        return BACKENDS[name](runner)
    except KeyError:
        raise ConfigError(
            "backend", f"unknown backend {name!r} (choose from {', '.join(CHOICES)})"
        ) from None


def choose(requested: str, runner: Runner, options: EbpfOptions | None = None) -> Choice:
    """Resolve `auto` (or check an explicit choice) against this host."""
    if requested != "auto":
        backend = make_backend(requested, runner, options)
        reason = backend.unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(f"backend {requested} cannot run here: {reason}")
        return Choice(backend, f"{requested} requested explicitly")
    name, why = preferred(runner, options)
    backend = make_backend(name, runner, options)
    reason = backend.unavailable_reason()
    if reason is None:
        return Choice(backend, why)
    if name == "ebpf":
        fallback, fallback_why = preferred_netfilter(runner)
        chosen = choose(fallback, runner)
        return Choice(chosen.backend, f"{fallback_why} (not eBPF: {reason})")
    other = make_backend("iptables" if name == "nftables" else "nftables", runner)
    other_reason = other.unavailable_reason()
    if other_reason is None:
        return Choice(other, f"{why}, but {name} cannot run here ({reason}): using {other.name}")
    raise BackendUnavailable(
        f"no backend can run here: {name}: {reason}; {other.name}: {other_reason}"
    )


def installed_backends(runner: Runner, options: EbpfOptions | None = None) -> list[str]:
    """Backends that have sofamesh objects in the kernel right now."""
    found = []
    if EbpfBackend(runner, options).installed():
        found.append("ebpf")
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


def preferred(runner: Runner, options: EbpfOptions | None = None) -> tuple[str, str]:
    installed = installed_backends(runner, options)
    if len(installed) == 1:
        return installed[0], f"sofamesh rules are already installed with {installed[0]}"
    not_ebpf = ebpf_unavailable(runner, options)
    if not_ebpf is None:
        return "ebpf", "the kernel, BTF, headers and bcc support eBPF and the programs load"
    name, why = preferred_netfilter(runner)
    return name, f"{why} (not eBPF: {not_ebpf})"


def ebpf_unavailable(runner: Runner, options: EbpfOptions | None) -> str | None:
    """Why `auto` must not pick eBPF here, or None. Cheap checks first, then a probe load
    of the programs (compiles and loads, attaches nothing)."""
    if (options is None or options.cgroup is None) and not in_initial_netns():
        return "inside a network namespace eBPF needs an explicit --cgroup"
    backend = EbpfBackend(runner, options)
    return backend.unavailable_reason() or backend.probe()


def preferred_netfilter(runner: Runner) -> tuple[str, str]:
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
