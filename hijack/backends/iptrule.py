"""One iptables rule as plain data: built from the plan, rendered as iptables-save text
and turned into a libiptc rule in the worker process."""

from __future__ import annotations

from dataclasses import dataclass

Param = tuple[str, str | tuple[str, ...]]


@dataclass(frozen=True)
class IptRule:
    """One iptables rule, in the shape both libiptc and iptables-save text are built from."""

    chain: str
    src: str | None
    dst: str | None  # may start with "!"
    out_iface: str | None
    matches: tuple[tuple[str, tuple[Param, ...]], ...]
    target: str
    target_params: tuple[Param, ...] = ()

    def text(self) -> str:
        parts = [f"-A {self.chain}"]
        if self.src:
            parts.append(f"-s {self.src}")
        if self.dst:
            parts.append(f"! -d {self.dst[1:]}" if self.dst.startswith("!") else f"-d {self.dst}")
        if self.out_iface:
            parts.append(f"-o {self.out_iface}")
        parts.append("-p tcp")
        for name, params in self.matches:
            parts.append(f"-m {name} " + " ".join(_param_text(p) for p in params))
        parts.append(f"-j {self.target}")
        parts += [_param_text(p) for p in self.target_params]
        return " ".join(parts)


def _param_text(param: Param) -> str:
    key, value = param
    if isinstance(value, tuple):
        return f"--{key} {' '.join(value)}"
    if key == "comment":
        return f'--{key} "{value}"'
    if value.startswith("!"):
        return f"! --{key} {value[1:]}"
    return f"--{key} {value}"
