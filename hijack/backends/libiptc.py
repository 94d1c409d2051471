"""The libiptc (python-iptables) calls of the iptables backend, one family per process.

python-iptables keeps libxtables' global extension registry: once a process has loaded an
extension (REDIRECT, say) for IPv4 it cannot load it for IPv6 ("can't find target
REDIRECT"). So every operation here runs in a fresh child process for one family; the
parent never imports iptc. Results cross the process boundary as plain data.
"""

from __future__ import annotations

import ipaddress
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hijack.backends.iptrule import IptRule
from hijack.errors import HijackError
from hijack.model import Family

T = TypeVar("T")

HOOK_CHAIN_NAMES = ("PREROUTING", "OUTPUT")
CHAIN_PREFIX = "SOFAMESH_"
COMMENT_PREFIX = "sofamesh:"
# python-iptables runs `ldconfig -v` at import to find extensions unless this is set.
XTABLES_DIRS = ("/usr/lib/x86_64-linux-gnu/xtables", "/usr/lib64/xtables", "/usr/lib/xtables")


@dataclass(frozen=True)
class ReadRule:
    chain: str
    comment: str
    text: str
    packets: int
    bytes: int


@dataclass(frozen=True)
class ReadChain:
    name: str
    ours: bool
    rules: tuple[ReadRule, ...]


def in_child(fn: Callable[..., T], *args: Any) -> T:
    """Run fn(*args) in a fresh interpreter (no inherited libxtables state).

    A plain subprocess rather than multiprocessing: forkserver/spawn re-import the caller's
    __main__, which is not ours to control. Data crosses as pickle between two copies of
    this same module, never from anyone else.
    """
    env = dict(os.environ)
    if "XTABLES_LIBDIR" not in env:
        env["XTABLES_LIBDIR"] = next((d for d in XTABLES_DIRS if Path(d).is_dir()), "")
    proc = subprocess.run(
        [sys.executable, "-m", __name__],
        input=pickle.dumps((fn.__name__, args)),
        capture_output=True,
        env={k: v for k, v in env.items() if v},
        timeout=60,
        check=False,
    )
    try:
        ok, value = pickle.loads(proc.stdout)  # noqa: S301  (our own child's answer)
    except (pickle.UnpicklingError, EOFError):
        detail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise HijackError(f"libiptc worker failed: {detail[0]}") from None
    if not ok:
        raise HijackError(str(value))
    return value  # type: ignore[no-any-return]


def _child_main() -> None:
    name, args = pickle.loads(sys.stdin.buffer.read())  # noqa: S301  (from our parent)
    _touch_only_nat()
    handlers: dict[str, Callable[..., Any]] = {"probe": probe, "commit": commit, "read": read}
    fn = handlers[name]
    try:
        answer: tuple[bool, Any] = (True, fn(*args))
    except Exception as exc:  # python-iptables raises many kinds; the parent decides
        answer = (False, f"{type(exc).__name__}: {exc}")
    sys.stdout.buffer.write(pickle.dumps(answer))


def _touch_only_nat() -> None:
    """python-iptables resolves a jump to a user chain by opening every table of the family,
    which makes the kernel instantiate raw, mangle and security tables we never use: residue
    an uninstall could not take back. This worker only ever touches nat."""
    import iptc  # noqa: PLC0415

    iptc.Rule.tables = property(lambda self: [iptc.Table(iptc.Table.NAT)])
    iptc.Rule6.tables = property(lambda self: [iptc.Table6(iptc.Table6.NAT)])


def _table(family: Family) -> Any:
    import iptc  # noqa: PLC0415

    return iptc.Table(iptc.Table.NAT) if family == 4 else iptc.Table6(iptc.Table6.NAT)


def _to_iptc(r: IptRule, family: Family) -> Any:
    import iptc  # noqa: PLC0415

    rule = iptc.Rule() if family == 4 else iptc.Rule6()
    rule.protocol = "tcp"
    if r.src:
        rule.src = r.src
    if r.dst:
        rule.dst = r.dst
    if r.out_iface:
        rule.out_interface = r.out_iface
    for name, params in r.matches:
        match = rule.create_match(name)
        for key, value in params:
            match.set_parameter(key, list(value) if isinstance(value, tuple) else value)
    target = rule.create_target(r.target)
    for key, value in r.target_params:
        target.set_parameter(key, value)
    return rule


def _comment(rule: Any) -> str:
    for match in rule.matches:
        if match.name == "comment":
            return str(match.comment or "").strip('"')
    return ""


def _rule_text(rule: Any, chain: str) -> str:
    parts = [f"-A {chain}"]
    for flag, value in (("-s", rule.src), ("-d", rule.dst)):
        if value and not value.lstrip("!").startswith(("0.0.0.0/0", "::/0")):
            neg, addr = value.startswith("!"), value.lstrip("!")
            parts.append(f"{'! ' if neg else ''}{flag} {ipaddress.ip_network(addr, strict=False)}")
    if rule.out_interface:
        parts.append(f"-o {rule.out_interface}")
    if rule.protocol:
        parts.append(f"-p {rule.protocol}")
    for match in rule.matches:
        params = match.get_all_parameters()
        text = " ".join(
            f"{'! ' if v[:1] == ['!'] else ''}--{k} {' '.join(x for x in v if x != '!')}".rstrip()
            for k, v in params.items()
        )
        parts.append(f"-m {match.name} {text}")
    if rule.target is not None:
        tparams = rule.target.get_all_parameters()
        parts.append(f"-j {rule.target.name}")
        parts += [f"--{k} {' '.join(v)}" for k, v in tparams.items()]
    return " ".join(parts)


def probe() -> None:
    """Raise if libiptc cannot read the nat table here."""
    _table(4).refresh()


def commit(family: Family, body: list[IptRule], hooks: list[IptRule]) -> bool:
    """Replace our chains and hook jumps in ONE commit of this family's nat table.

    Empty body and hooks means: remove everything of ours. True if anything of ours was
    there before."""
    import iptc  # noqa: PLC0415

    table = _table(family)
    table.autocommit = False
    table.refresh()
    had_any = False
    for hook in HOOK_CHAIN_NAMES:
        chain = iptc.Chain(table, hook)
        for rule in [r for r in chain.rules if _comment(r).startswith(COMMENT_PREFIX)]:
            chain.delete_rule(rule)
            had_any = True
    ours = [c for c in table.chains if c.name.startswith(CHAIN_PREFIX)]
    had_any |= bool(ours)
    for chain in ours:
        chain.flush()
    wanted = {r.chain for r in body} | {r.target for r in body if r.target.startswith(CHAIN_PREFIX)}
    for chain in ours:
        if chain.name not in wanted:
            table.delete_chain(chain.name)
    for name in sorted(wanted):
        if not table.is_chain(name):
            table.create_chain(name)
    for r in body:
        iptc.Chain(table, r.chain).append_rule(_to_iptc(r, family))
    for r in reversed(hooks):
        iptc.Chain(table, r.chain).insert_rule(_to_iptc(r, family))
    if had_any or body:
        table.commit()
    return had_any


def read(family: Family) -> list[ReadChain]:
    """Our chains, and our rules in the hook chains, with counters and text."""
    table = _table(family)
    table.refresh()
    out: list[ReadChain] = []
    for chain in table.chains:
        ours = chain.name.startswith(CHAIN_PREFIX)
        if not ours and chain.name not in HOOK_CHAIN_NAMES:
            continue
        rules = []
        for rule in chain.rules:
            comment = _comment(rule)
            if not ours and not comment.startswith(COMMENT_PREFIX):
                continue
            packets, nbytes = rule.get_counters()
            rules.append(
                ReadRule(chain.name, comment, _rule_text(rule, chain.name), packets, nbytes)
            )
        out.append(ReadChain(chain.name, ours, tuple(rules)))
    return out


if __name__ == "__main__":
    # Re-import under the package name so pickled results name hijack.backends.libiptc.*,
    # not __main__.*, and the parent can load them.
    from hijack.backends.libiptc import _child_main as child_main

    child_main()
