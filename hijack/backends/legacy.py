"""Reading legacy iptables state without changing it (used by detection and mix checks)."""

from __future__ import annotations

from hijack.command import Runner

# (family label, the kernel's list of loaded legacy tables, the save command)
LEGACY = (
    ("ip", "/proc/net/ip_tables_names", "iptables-legacy-save"),
    ("ip6", "/proc/net/ip6_tables_names", "ip6tables-legacy-save"),
)


def legacy_dumps(runner: Runner) -> dict[str, str]:
    """iptables-legacy-save output per family, only for families with tables loaded:
    reading a legacy table the kernel has not loaded would load it, itself a change."""
    dumps = {}
    for family, names_file, save in LEGACY:
        tables = (runner.read(names_file) or "").split()
        if tables and runner.which(save):
            dumps[family] = runner.run([save], check=False).stdout
    return dumps


def sofamesh_chains(runner: Runner) -> list[str]:
    """Families whose legacy tables hold SOFAMESH_ chains."""
    return [family for family, dump in legacy_dumps(runner).items() if "SOFAMESH_" in dump]
