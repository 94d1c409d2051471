"""Whether this machine can run the eBPF backend's tests, and why not (skips say it)."""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path


@functools.cache
def ebpf_skip_reason() -> str | None:
    release = os.uname().release
    if importlib.util.find_spec("bcc") is None:
        return "bcc is not importable (scripts/dev.sh setup installs python3-bpfcc)"
    if not Path(f"/lib/modules/{release}/build/Makefile").exists():
        return f"no kernel headers at /lib/modules/{release}/build (scripts/dev.sh setup)"
    if "cgroup2" not in Path("/proc/self/mounts").read_text():
        return "no cgroup2 file system is mounted"
    return None
