"""Which TCP ports have a listener in this network namespace (from /proc/net/tcp{,6}).

Installing rules that redirect to a port nobody listens on would blackhole traffic; the
CLI checks this before it applies (the agent gates on the sidecar's health instead)."""

from __future__ import annotations

from pathlib import Path

LISTEN = "0A"  # TCP_LISTEN in the kernel's hex state column


def listening_ports(proc_net: Path = Path("/proc/net")) -> set[int]:
    ports: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == LISTEN:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
