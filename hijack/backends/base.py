"""The interface every interception backend implements: render / apply / remove / inspect."""

from __future__ import annotations

import abc
import ipaddress
from collections.abc import Iterable

from hijack.command import Runner
from hijack.model import Installed, Plan, View
from hijack.values import IPNetwork, PortRange, merge_ranges

# The inert rule a parked removal leaves: redirects to a port nothing listens on, in a chain
# no hook reaches; it exists only to keep the kernel's NAT state for redirected connections.
PARK_PORT = 1
PARK_COMMENT = "sofamesh:parked"


class Backend(abc.ABC):
    """A way to intercept connections in the current network namespace."""

    name: str

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    @abc.abstractmethod
    def unavailable_reason(self) -> str | None:
        """None when this backend can run here, else why not (a hint included)."""

    @abc.abstractmethod
    def render(self, plan: Plan) -> str:
        """The exact text that apply would load (dry-run and golden files)."""

    @abc.abstractmethod
    def expected_view(self, plan: Plan) -> View:
        """What inspect() returns right after apply(plan) succeeded."""

    @abc.abstractmethod
    def apply(self, plan: Plan) -> None:
        """Install plan atomically, replacing what we installed before; on failure the
        previous state is restored and ApplyFailed is raised."""

    @abc.abstractmethod
    def remove(self, *, park: bool = False) -> bool:
        """Remove everything this backend installed (and nothing else); True if anything was.

        park=True leaves one inert NAT rule (never reached) so the kernel keeps translating
        connections that were redirected before: without any NAT rule left in the namespace
        the kernel stops conntrack there and those connections are reset. Run a plain
        remove() once the sidecar has drained."""

    @abc.abstractmethod
    def inspect(self) -> Installed:
        """Read back what is installed, with per-rule counters."""

    @abc.abstractmethod
    def foreign_objects(self) -> list[str]:
        """sofamesh objects of the *other* netfilter variant that would make us mix the two."""


def normalize_networks(items: Iterable[IPNetwork]) -> tuple[str, ...]:
    """A canonical element list, so that kernel read-back and plan compare equal."""
    nets = list(items)
    v4 = ipaddress.collapse_addresses(n for n in nets if isinstance(n, ipaddress.IPv4Network))
    v6 = ipaddress.collapse_addresses(n for n in nets if isinstance(n, ipaddress.IPv6Network))
    return tuple(str(n) for n in (*v4, *v6))


def normalize_ports(items: Iterable[PortRange]) -> tuple[str, ...]:
    return tuple(str(r) for r in merge_ranges(items))
