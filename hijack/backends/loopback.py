"""The sidecar's IPv6 source address on lo (::6), the IPv6 twin of 127.0.0.6.

The sidecar reaches a local app from 127.0.0.6 so that the rules can tell that connection
from the app's own (which they intercept). 127.0.0.0/8 is all local already; ::6 is not,
so when IPv6 is intercepted the backend adds ::6/128 to lo (as Istio does), and takes it
away with the rules. It is added deprecated (preferred_lft 0) and without DAD: the kernel
never picks a deprecated address as a source by itself, and that pairing marks it as ours,
so an ::6 someone else configured is left alone. (IPv6 ignores a requested scope: the
kernel derives it from the address.)
"""

from __future__ import annotations

import json

from hijack.command import Runner

ADDRESS = "::6"
VIEW_KEY = "lo/ipv6-sidecar-source"


def _entry(runner: Runner) -> dict[str, object] | None:
    result = runner.run(["ip", "-j", "-6", "addr", "show", "dev", "lo"], check=False)
    if result.returncode != 0 or not result.stdout.strip():
        return None
    links = json.loads(result.stdout)
    for link in links if isinstance(links, list) else []:
        for info in link.get("addr_info", []):
            if info.get("local") == ADDRESS and info.get("prefixlen") == 128:
                return dict(info)
    return None


def ours(runner: Runner) -> bool:
    info = _entry(runner)
    return info is not None and info.get("nodad") is True and info.get("preferred_life_time") == 0


def ensure(runner: Runner) -> None:
    if _entry(runner) is None:
        runner.run(
            [
                "ip",
                "-6",
                "addr",
                "add",
                f"{ADDRESS}/128",
                "dev",
                "lo",
                "preferred_lft",
                "0",
                "nodad",
            ]
        )


def remove(runner: Runner) -> bool:
    if ours(runner):
        runner.run(["ip", "-6", "addr", "del", f"{ADDRESS}/128", "dev", "lo"])
        return True
    return False
