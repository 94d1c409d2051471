"""Compile and load the interception programs with bcc (the only place that needs bcc).

bcc compiles the C source at run time against the kernel headers, then creates the maps
and loads the programs. The caller pins what it gets back; afterwards nothing needs bcc.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hijack.errors import BackendUnavailable

SOURCE = Path(__file__).with_name("bpf") / "sofamesh.bpf.c"

# Program types and expected attach types (linux/bpf.h).
PROG_SOCK_OPS = 13
PROG_CGROUP_SOCK_ADDR = 18
PROG_CGROUP_SOCKOPT = 25
PROG_SK_LOOKUP = 30

ATTACH_SOCK_OPS = 3
ATTACH_INET4_CONNECT = 10
ATTACH_INET6_CONNECT = 11
ATTACH_GETSOCKOPT = 21
ATTACH_INET4_GETPEERNAME = 29
ATTACH_INET6_GETPEERNAME = 30
ATTACH_SK_LOOKUP = 36


@dataclass(frozen=True)
class Program:
    name: str
    prog_type: int
    attach_type: int
    # "cgroup": attached to the intercepted cgroup; "netns": to the node's network namespace
    target: str


PROGRAMS = (
    Program("connect4", PROG_CGROUP_SOCK_ADDR, ATTACH_INET4_CONNECT, "cgroup"),
    Program("connect6", PROG_CGROUP_SOCK_ADDR, ATTACH_INET6_CONNECT, "cgroup"),
    Program("getpeername4", PROG_CGROUP_SOCK_ADDR, ATTACH_INET4_GETPEERNAME, "cgroup"),
    Program("getpeername6", PROG_CGROUP_SOCK_ADDR, ATTACH_INET6_GETPEERNAME, "cgroup"),
    Program("getsockopt", PROG_CGROUP_SOCKOPT, ATTACH_GETSOCKOPT, "cgroup"),
    Program("sockops", PROG_SOCK_OPS, ATTACH_SOCK_OPS, "cgroup"),
    Program("inbound", PROG_SK_LOOKUP, ATTACH_SK_LOOKUP, "netns"),
)
MAPS = (
    "settings",
    "ports",
    "cidr4",
    "cidr6",
    "console",
    "hits",
    "meta",
    "by_cookie",
    "by_source",
    "inbound_sockets",
)
# Typed defines: sizes fixed by the product, never operator text.
MAX_CIDRS = 131072  # two generations of up to 65,536 prefixes per family
MAX_FLOWS = 65536


def source_version() -> int:
    """64 bits of the source hash (and of the defines): stored in the `meta` map so an
    upgraded agent sees that the pinned programs are older and reloads them."""
    digest = hashlib.sha256(SOURCE.read_bytes() + f"{MAX_CIDRS}/{MAX_FLOWS}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # fits a signed 64-bit too


def bcc_missing() -> str | None:
    if importlib.util.find_spec("bcc") is None:
        return (
            "bcc is not importable (install python3-bpfcc and use a venv made with "
            "--system-site-packages)"
        )
    return None


@dataclass
class Loaded:
    """File descriptors of freshly loaded programs and maps, owned by a bcc object."""

    programs: dict[str, int]
    maps: dict[str, int]


@contextmanager
def load() -> Iterator[Loaded]:
    """Compile and load; the fds stay valid inside the `with` (pin them there)."""
    missing = bcc_missing()
    if missing:
        raise BackendUnavailable(missing)
    bcc: Any = importlib.import_module("bcc")
    cflags = [
        f"-DSOFAMESH_MAX_CIDRS={int(MAX_CIDRS)}",
        f"-DSOFAMESH_MAX_FLOWS={int(MAX_FLOWS)}",
        "-Wno-unused-value",
    ]
    try:
        bpf = bcc.BPF(src_file=str(SOURCE).encode(), cflags=cflags)
    except Exception as exc:  # bcc raises bare Exception on compile errors
        raise BackendUnavailable(f"bcc could not compile the programs: {exc}") from None
    try:
        programs = {}
        for prog in PROGRAMS:
            try:
                fn = bpf.load_func(prog.name.encode(), prog.prog_type, attach_type=prog.attach_type)
            except Exception as exc:
                raise BackendUnavailable(f"the kernel refused program {prog.name}: {exc}") from None
            programs[prog.name] = int(fn.fd)
        # By fd, not through bcc's table classes: bcc 0.26 has none for SOCKMAP.
        libbcc: Any = importlib.import_module("bcc.libbcc")
        maps = {name: int(libbcc.lib.bpf_table_fd(bpf.module, name.encode())) for name in MAPS}
        yield Loaded(programs, maps)
    finally:
        bpf.cleanup()
