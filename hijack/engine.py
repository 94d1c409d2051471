"""The interception facade: plan, apply, remove, status (the 16-line Setup/Cleanup idea).

Apply is idempotent (R-HJ-6): when the kernel already holds exactly the plan, nothing is
touched, so counters keep counting. Mixing netfilter variants is refused (R-HJ-5).
"""

from __future__ import annotations

from dataclasses import dataclass

from hijack.backends.base import Backend
from hijack.backends.ebpf import EbpfOptions
from hijack.builder import build_plan
from hijack.command import Runner, SubprocessRunner
from hijack.config import HijackConfig
from hijack.detect import choose, installed_backends, make_backend
from hijack.errors import TagConflict
from hijack.model import Installed, Plan
from hijack.resolve import resolve


@dataclass(frozen=True)
class ApplyResult:
    backend: str
    reason: str
    plan: Plan
    changed: bool
    digest: str


@dataclass(frozen=True)
class Status:
    backend: str | None
    installed: Installed | None
    expected_digest: str | None
    drift: tuple[str, ...]

    @property
    def in_sync(self) -> bool:
        return self.expected_digest is not None and not self.drift


def plan(config: HijackConfig, *, require_user: bool = True) -> Plan:
    return build_plan(resolve(config, require_user=require_user))


def apply(
    config: HijackConfig,
    backend: str = "auto",
    runner: Runner | None = None,
    options: EbpfOptions | None = None,
) -> ApplyResult:
    """`options` say where the eBPF backend attaches and pins (ignored by the others)."""
    runner = runner or SubprocessRunner()
    the_plan = plan(config)
    choice = choose(backend, runner, options)
    _refuse_mixing(choice.backend, installed_backends(runner, options))
    expected = choice.backend.expected_view(the_plan)
    if choice.backend.inspect().view == expected:
        return ApplyResult(choice.backend.name, choice.reason, the_plan, False, expected.digest)
    choice.backend.apply(the_plan)
    return ApplyResult(choice.backend.name, choice.reason, the_plan, True, expected.digest)


def remove(
    backend: str = "auto",
    runner: Runner | None = None,
    *,
    park: bool = False,
    options: EbpfOptions | None = None,
) -> list[str]:
    """Remove sofamesh rules; `auto` removes them from whichever variant holds them.
    Returns the backends that had something to remove. With park=True, connections already
    redirected keep working until a plain remove (see Backend.remove)."""
    runner = runner or SubprocessRunner()
    names = installed_backends(runner, options) if backend == "auto" else [backend]
    return [n for n in names if make_backend(n, runner, options).remove(park=park)]


def status(
    config: HijackConfig | None = None,
    runner: Runner | None = None,
    options: EbpfOptions | None = None,
) -> Status:
    """What is installed, and (given the desired config) how it differs from the plan."""
    runner = runner or SubprocessRunner()
    names = installed_backends(runner, options)
    if not names:
        return Status(None, None, None, ("nothing installed",) if config else ())
    if len(names) > 1:
        raise TagConflict(
            f"sofamesh rules exist in both {' and '.join(names)}: run `sofamesh hijack remove`"
        )
    backend = make_backend(names[0], runner, options)
    installed = backend.inspect()
    if config is None:
        return Status(backend.name, installed, None, ())
    expected = backend.expected_view(plan(config))
    return Status(backend.name, installed, expected.digest, tuple(expected.diff(installed.view)))


def _refuse_mixing(backend: Backend, installed: list[str]) -> None:
    # Two backends intercepting at once would redirect twice (or loop): never mix them.
    foreign = backend.foreign_objects() + [
        f"sofamesh rules are installed with {name}" for name in installed if name != backend.name
    ]
    if foreign:
        raise TagConflict(
            f"refusing to install {backend.name} rules: {'; '.join(foreign)}. "
            "Remove them first with `sofamesh hijack remove`."
        )
