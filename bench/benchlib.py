"""What every benchmark here shares: machine facts, RESULTS.md sections, medians, wrk.

A sibling module (benchmarks run as `python bench/NAME.py`, which puts bench/ first on
sys.path)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS_FILE = REPO / "bench" / "RESULTS.md"


def machine_facts(packages: dict[str, str]) -> dict[str, str]:
    """Date, CPUs, kernel, load, other labs, and the versions of `packages` (label -> name)."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    facts = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "kernel": platform.release(),
        "cpu": model,
        "python": platform.python_version(),
        "load_before": loadavg(),
        "other_labs": str(other_labs()),
    }
    facts.update({label: package_version(name) for label, name in packages.items()})
    return facts


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def other_labs() -> int:
    """Lab namespaces of other processes (someone else's tests sharing the CPUs)."""
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        return 0
    mine = f"smlab-{os.getpid()}-"
    return len(
        {n.split("-")[1] for n in names if n.startswith("smlab-") and not n.startswith(mine)}
    )


def package_version(name: str) -> str:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else "not installed"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def wrk_errors(text: str) -> int:
    """Socket errors plus non-2xx/3xx responses in a wrk report."""
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return errors + (int(non2xx[1]) if non2xx else 0)


def replace_section(begin: str, end: str, section: str) -> None:
    """Put `section` (which starts with `begin` and ends with `end`) into RESULTS.md,
    replacing the previous one with the same markers and leaving the others alone."""
    text = RESULTS_FILE.read_text() if RESULTS_FILE.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS_FILE.write_text(text)
