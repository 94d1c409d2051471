"""eBPF backend: cgroup connect hooks outbound, sk_lookup inbound, no NAT (R-HJ-5..9).

Outbound, cgroup/connect4+6 programs on the intercepted cgroup send connections to the
sidecar's outbound listener and record where they were going; the sidecar reads that with
the same SO_ORIGINAL_DST call it uses with iptables (a cgroup/getsockopt program answers
it), and the app's getpeername() shows the real peer. Inbound, an sk_lookup program on the
node's network namespace hands intercepted connections to the sidecar's inbound socket
(taken from a SOCKMAP); when that socket is gone, connections reach the app (fail open).
apply puts the sidecar's listening sockets into that map, and a sock_ops program puts any
socket that later listens on the inbound port there too, so a restarted sidecar takes over
again without the agent.

Every operator value lives in maps: a config change writes the idle half of the port and
CIDR maps and flips one generation number, so it is atomic and reloads nothing. Programs,
maps and links are pinned under <bpffs>/sofamesh/<netns inode>: interception outlives the
agent process, and removal unpins exactly that directory.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hijack.backends import ebpf_load, ebpf_sys, loopback
from hijack.backends.base import Backend
from hijack.backends.ebpf_sockets import borrow
from hijack.backends.ebpf_state import (
    PORTS,
    Contents,
    Observed,
    Settings,
    cidr_key,
    console_key,
    parse_cidr_key,
    parse_console_key,
    redirect_rules,
    rules,
)
from hijack.backends.legacy import sofamesh_chains
from hijack.backends.nftables import TABLE as NFT_TABLE
from hijack.command import Runner
from hijack.errors import ApplyFailed, BackendUnavailable, ConfigError, HijackError
from hijack.model import Installed, InstalledRule, Plan, View

BPF_FS_DEFAULT = Path("/sys/fs/bpf")
MIN_KERNEL = (5, 9)  # sk_lookup and listening sockets in SOCKMAP; links for cgroup hooks
HIT_SLOTS = 18
KEY0 = struct.pack("=I", 0)


@dataclass(frozen=True)
class EbpfOptions:
    """Where the eBPF backend attaches and pins."""

    # The cgroup v2 directory whose processes are intercepted; None: the cgroup2 root
    # (a real VM, where every app lives below it).
    cgroup: Path | None = None
    # A bpffs mount point (mounted there if it is not one yet); pins go under sofamesh/.
    bpffs: Path = BPF_FS_DEFAULT


def cgroup2_root(mounts: str | None) -> Path | None:
    """The cgroup2 mount point, found from the mount table (it is not always /sys/fs/cgroup)."""
    for line in (mounts or "").splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(fields[1])
    return None


def _netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def in_initial_netns() -> bool:
    try:
        return os.stat("/proc/1/ns/net").st_ino == _netns_inode()
    except OSError:
        return False


class EbpfBackend(Backend):
    name = "ebpf"

    def __init__(self, runner: Runner, options: EbpfOptions | None = None) -> None:
        super().__init__(runner)
        self.options = options or EbpfOptions()

    # -- where things are -----------------------------------------------------------------

    @property
    def pin_dir(self) -> Path:
        """One directory per node (network namespace): several test VMs share one bpffs."""
        return self.options.bpffs / "sofamesh" / str(_netns_inode())

    def installed(self) -> bool:
        try:
            return (self.pin_dir / "map_settings").exists()
        except PermissionError:  # not root: bpffs is closed to us, and so is using it
            return False

    def cgroup(self) -> Path:
        if self.options.cgroup is not None:
            path = self.options.cgroup
        else:
            root = cgroup2_root(self.runner.read("/proc/self/mounts"))
            if root is None:
                raise BackendUnavailable("no cgroup2 file system is mounted")
            path = root
        if not (path / "cgroup.procs").is_file():
            raise ConfigError("cgroup", f"{path} is not a cgroup v2 directory")
        root = cgroup2_root(self.runner.read("/proc/self/mounts"))
        if root is not None and path.resolve() == root.resolve() and not in_initial_netns():
            # cgroup hooks see every namespace; from inside a network namespace, attaching
            # at the root would send other namespaces' connections to a sidecar they cannot
            # reach. Name the subtree of this node's processes instead.
            raise ConfigError(
                "cgroup",
                "refusing the cgroup2 root from inside a network namespace: pass --cgroup "
                "with the cgroup of this node's processes",
            )
        return path

    # -- Backend interface ----------------------------------------------------------------

    def unavailable_reason(self) -> str | None:
        release = (self.runner.read("/proc/sys/kernel/osrelease") or "").strip()
        try:
            version = tuple(int(x) for x in release.split("-")[0].split(".")[:2])
        except ValueError:
            version = ()
        if not release or version < MIN_KERNEL:
            return f"kernel {release or 'unknown'} is older than 5.9 (sk_lookup, SOCKMAP)"
        if cgroup2_root(self.runner.read("/proc/self/mounts")) is None:
            return "no cgroup2 file system is mounted"
        if not Path("/sys/kernel/btf/vmlinux").exists() and not self.installed():
            return "the kernel has no BTF (/sys/kernel/btf/vmlinux)"
        if not self.installed():
            if self.runner.read(f"/lib/modules/{release}/build/Makefile") is None:
                return (
                    f"no kernel headers at /lib/modules/{release}/build (install "
                    "linux-headers-amd64; scripts/dev.sh setup links them)"
                )
            missing = ebpf_load.bcc_missing()
            if missing:
                return missing
        return None

    def probe(self) -> str | None:
        """Compile and load the programs without attaching or pinning anything: None when
        that works, else why not. `auto` runs this before choosing eBPF."""
        if self.installed():
            return None
        try:
            with ebpf_load.load():
                return None
        except HijackError as exc:
            return str(exc)

    def render(self, plan: Plan) -> str:
        c = Contents.from_plan(plan, dry_run=True)
        s = c.settings
        lines = [
            "# sofamesh eBPF plan; families: " + ", ".join(f"ipv{f}" for f in plan.families),
            *(f"# {note}" for note in plan.notes),
            f"# programs: bcc-compiled {ebpf_load.SOURCE.name} "
            f"(version {ebpf_load.source_version():016x})",
        ]
        for prog in ebpf_load.PROGRAMS:
            where = "netns of this node" if prog.target == "netns" else "the intercepted cgroup"
            lines.append(f"program {prog.name}: attach type {prog.attach_type} on {where}")
        lines += [
            "pins: <bpffs>/sofamesh/<netns inode>/{programs, maps, links}",
            f"map settings: enabled=1 proxy_uid={s.proxy_uid} ipv6={int(s.ipv6)} "
            f"in_port={s.in_port} out_port={s.out_port}",
        ]
        names = ["direct", "ssh", "proxy", "excluded", "intercept"]
        for direction, label in ((0, "inbound"), (1, "outbound")):
            for cls_, cname in enumerate(names):
                if cls_ == 0:
                    continue
                ranges = c.ranges(cls_, direction)
                lines.append(
                    f"map ports[{label}] {cname}: {','.join(map(str, ranges)) or '(none)'}"
                )
        lines.append(f"map cidr4 ({len(c.cidr4)} entries): {' '.join(map(str, c.cidr4))}")
        if s.ipv6:
            lines.append(f"map cidr6 ({len(c.cidr6)} entries): {' '.join(map(str, c.cidr6))}")
        console = " ".join(f"{a}:{p}" for a, p in c.console)
        lines.append(f"map console ({len(c.console)} entries): {console}")
        lines.append(
            f"map inbound_sockets: the sidecar's listening sockets on :{s.in_port} "
            "(slot 0 IPv4, slot 1 IPv6)"
        )
        lines.append("rules (evaluation order; hit counters in map hits):")
        lines += [f"  [{r.chain}] {r.spec}  # {r.comment}" for r in rules(c)]
        lines += [f"  [{r.chain}] {r.spec}  # {r.comment}" for r in redirect_rules(c, (0,))]
        return "\n".join(lines) + "\n"

    def expected_view(self, plan: Plan) -> View:
        contents = Contents.from_plan(plan)
        return Observed(
            contents,
            tuple(p.name for p in ebpf_load.PROGRAMS),
            (0, 1) if contents.settings.ipv6 else (0,),
            ebpf_load.source_version(),
            6 in plan.families,
        ).view()

    def apply(self, plan: Plan) -> None:
        contents = Contents.from_plan(plan)
        if self.installed() and self._version() != ebpf_load.source_version():
            self.remove()  # programs from an older sofamesh: replace them whole
        if contents.settings.ipv6:
            loopback.ensure(self.runner)
        if not self.installed():
            self._install(contents)
        else:
            try:
                self._write(contents)
                self._ensure_links()
            except HijackError as exc:
                raise ApplyFailed(f"updating the eBPF maps failed: {exc}") from exc
        self._register_sockets(contents.settings.in_port)

    def remove(self, *, park: bool = False) -> bool:
        existed = self.installed()
        if park:
            # No NAT to keep: redirected connections are plain sockets to the sidecar.
            # Switching the programs off sends new connections direct; getsockopt and
            # getpeername keep answering for the ones already redirected.
            if existed:
                with self._map("settings") as fd:
                    raw = ebpf_sys.map_lookup(fd, KEY0, 24)
                    if raw is not None:
                        settings, generation = Settings.unpack(raw)
                        off = Settings(
                            False, settings.proxy_uid, settings.ipv6, settings.in_port,
                            settings.out_port,
                        )  # fmt: skip
                        ebpf_sys.map_update(fd, KEY0, off.pack(generation))
            return existed
        if self.pin_dir.exists():
            # Unpinning drops the last reference: links detach, programs and maps are freed.
            for entry in self.pin_dir.iterdir():
                entry.unlink()
            self.pin_dir.rmdir()
            with contextlib.suppress(OSError):  # ours too; other nodes may still use it
                self.pin_dir.parent.rmdir()
        loopback.remove(self.runner)
        return existed

    def inspect(self) -> Installed:
        if not self.installed():
            return Installed(self.name, (), View((), ()))
        observed, hits = self._observe()
        c = observed.contents
        installed_rules = []
        shown = rules(c) + redirect_rules(c, observed.sockets[:1] or (0,))
        for r in shown:
            installed_rules.append(
                InstalledRule(
                    table="ebpf",
                    chain=r.chain,
                    text=r.spec,
                    comment=r.comment,
                    packets=hits[r.slot],
                    bytes=0,
                )
            )
        sizes = (("out_cidr4", len(c.cidr4)), ("out_cidr6", len(c.cidr6)))
        return Installed(self.name, tuple(installed_rules), observed.view(), sizes)

    def foreign_objects(self) -> list[str]:
        found = [f"legacy {f} nat table has SOFAMESH_ chains" for f in sofamesh_chains(self.runner)]
        if (
            self.runner.which("nft")
            and self.runner.run(["nft", "list", "table", "inet", NFT_TABLE], check=False).returncode
            == 0
        ):
            found.append(f"nftables table inet {NFT_TABLE} exists")
        return found

    # -- objects, for status --------------------------------------------------------------

    def objects(self) -> list[dict[str, object]]:
        """Pinned programs, maps and links with their kernel ids (for `hijack status`)."""
        out: list[dict[str, object]] = []
        if not self.pin_dir.exists():
            return out
        for entry in sorted(self.pin_dir.iterdir()):
            fd = ebpf_sys.get_pinned(str(entry))
            try:
                kind = entry.name.split("_", 1)[0]
                item: dict[str, object] = {"pin": str(entry), "kind": kind}
                if kind == "link":
                    info = ebpf_sys.link_info(fd)
                    item |= {
                        "id": info.id,
                        "prog_id": info.prog_id,
                        "attach_type": info.attach_type,
                        ("cgroup_id" if info.type == ebpf_sys.LINK_TYPE_CGROUP else "netns_ino"): (
                            info.target
                        ),
                    }
                else:
                    item["id"] = ebpf_sys.object_id(fd)
                out.append(item)
            finally:
                os.close(fd)
        return out

    # -- internals ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _map(self, name: str) -> Iterator[int]:
        fd = ebpf_sys.get_pinned(str(self.pin_dir / f"map_{name}"))
        try:
            yield fd
        finally:
            os.close(fd)

    def _version(self) -> int:
        with self._map("meta") as fd:
            raw = ebpf_sys.map_lookup(fd, KEY0, 8)
        return struct.unpack("=Q", raw)[0] if raw else 0

    def _ensure_bpffs(self) -> None:
        mount = self.options.bpffs
        mounts = self.runner.read("/proc/self/mounts") or ""
        if any(
            len(f) >= 3 and f[2] == "bpf" and Path(f[1]) == mount
            for f in (line.split() for line in mounts.splitlines())
        ):
            return
        mount.mkdir(parents=True, exist_ok=True)
        self.runner.run(["mount", "-t", "bpf", "bpf", str(mount)])

    def _install(self, contents: Contents) -> None:
        cgroup = self.cgroup()
        self._ensure_bpffs()
        # Compile and load before anything changes: a kernel that refuses the programs
        # leaves the node exactly as it was.
        with ebpf_load.load() as loaded:
            try:
                self.pin_dir.mkdir(parents=True, exist_ok=False)
                for name, fd in loaded.maps.items():
                    ebpf_sys.pin(fd, str(self.pin_dir / f"map_{name}"))
                for name, fd in loaded.programs.items():
                    ebpf_sys.pin(fd, str(self.pin_dir / f"prog_{name}"))
                with self._map("meta") as fd:
                    ebpf_sys.map_update(fd, KEY0, struct.pack("=Q", ebpf_load.source_version()))
                self._write(contents)
                self._attach_missing(cgroup)
            except (HijackError, OSError) as exc:
                with contextlib.suppress(OSError):
                    self.remove()
                raise ApplyFailed(
                    f"installing the eBPF programs failed, nothing left: {exc}"
                ) from exc

    def _ensure_links(self) -> None:
        missing = [p for p in ebpf_load.PROGRAMS if not (self.pin_dir / f"link_{p.name}").exists()]
        if missing:
            self._attach_missing(self.cgroup())

    def _attach_missing(self, cgroup: Path) -> None:
        cg_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        ns_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
        try:
            for prog in ebpf_load.PROGRAMS:
                link_pin = self.pin_dir / f"link_{prog.name}"
                if link_pin.exists():
                    continue
                prog_fd = ebpf_sys.get_pinned(str(self.pin_dir / f"prog_{prog.name}"))
                try:
                    target = ns_fd if prog.target == "netns" else cg_fd
                    link_fd = ebpf_sys.link_create(prog_fd, target, prog.attach_type)
                    try:
                        ebpf_sys.pin(link_fd, str(link_pin))
                    finally:
                        os.close(link_fd)
                finally:
                    os.close(prog_fd)
        finally:
            os.close(cg_fd)
            os.close(ns_fd)

    def _write(self, contents: Contents) -> None:
        """Fill the idle generation, then flip to it with one settings write."""
        with self._map("settings") as fd:
            raw = ebpf_sys.map_lookup(fd, KEY0, 24)
        enabled_before = raw is not None and Settings.unpack(raw)[0].enabled
        live = Settings.unpack(raw)[1] if raw is not None and enabled_before else None
        idle = 0 if live is None else 1 - live
        with self._map("ports") as fd:
            ebpf_sys.array_update_batch(fd, idle * PORTS, contents.classes, 2)
        for family, nets in ((4, contents.cidr4), (6, contents.cidr6)):
            with self._map(f"cidr{family}") as fd:
                size = 9 if family == 4 else 21
                for key in ebpf_sys.map_keys(fd, size):
                    if parse_cidr_key(key, family)[0] == idle:
                        ebpf_sys.map_delete(fd, key)
                for net in nets:
                    ebpf_sys.map_update(fd, cidr_key(net, idle), b"\x01")
        with self._map("console") as fd:
            wanted = {console_key(a, p) for a, p in contents.console}
            for key in ebpf_sys.map_keys(fd, 20):
                if key not in wanted:
                    ebpf_sys.map_delete(fd, key)
            for key in wanted:
                ebpf_sys.map_update(fd, key, b"\x01")
        with self._map("settings") as fd:
            ebpf_sys.map_update(fd, KEY0, contents.settings.pack(idle))
        # The old generation is no longer read: drop its prefixes so the maps hold one copy.
        for family in (4, 6):
            with self._map(f"cidr{family}") as fd:
                size = 9 if family == 4 else 21
                for key in ebpf_sys.map_keys(fd, size):
                    if parse_cidr_key(key, family)[0] != idle:
                        ebpf_sys.map_delete(fd, key)

    def _register_sockets(self, port: int) -> None:
        borrowed, opened = borrow(port)
        try:
            with self._map("inbound_sockets") as fd:
                for b in borrowed:
                    ebpf_sys.map_update(fd, struct.pack("=I", b.slot), struct.pack("=Q", b.fd))
        finally:
            for fd in opened:
                os.close(fd)

    def _observe(self) -> tuple[Observed, list[int]]:
        with self._map("settings") as fd:
            raw = ebpf_sys.map_lookup(fd, KEY0, 24)
        if raw is None:
            raise HijackError("the settings map has no entry")
        settings, generation = Settings.unpack(raw)
        with self._map("ports") as fd:
            classes = ebpf_sys.array_read_batch(fd, generation * PORTS, PORTS, 2)
        cidrs: dict[int, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {4: [], 6: []}
        for family in (4, 6):
            with self._map(f"cidr{family}") as fd:
                for key in ebpf_sys.map_keys(fd, 9 if family == 4 else 21):
                    gen, net = parse_cidr_key(key, family)
                    if gen == generation:
                        cidrs[family].append(net)
        with self._map("console") as fd:
            console = tuple(sorted(parse_console_key(k) for k in ebpf_sys.map_keys(fd, 20)))
        with self._map("inbound_sockets") as fd:
            sockets = tuple(
                slot
                for slot in (0, 1)
                if ebpf_sys.map_lookup(fd, struct.pack("=I", slot), 8) is not None
            )
        with self._map("hits") as fd:
            raw_hits = ebpf_sys.array_read_batch(fd, 0, HIT_SLOTS, 8)
        hits = list(struct.unpack(f"={HIT_SLOTS}Q", raw_hits))
        links = tuple(
            p.name for p in ebpf_load.PROGRAMS if (self.pin_dir / f"link_{p.name}").exists()
        )
        contents = Contents(
            settings,
            classes,
            tuple(sorted(n for n in cidrs[4] if isinstance(n, ipaddress.IPv4Network))),
            tuple(sorted(n for n in cidrs[6] if isinstance(n, ipaddress.IPv6Network))),
            console,
        )
        observed = Observed(contents, links, sockets, self._version(), loopback.ours(self.runner))
        return observed, hits
