"""Does a big blacklist slow down connection setup? (R-HJ-7)

Measures, in one run with interleaved rounds, for the iptables and nftables backends:

- the rate of NEW outbound TCP connections that the rules redirect to the outbound listener
  (node port 15001), with N excluded CIDRs plus N/10 excluded port ranges installed, for each
  N in --sizes; and the same rate with no rules at all (reference line);
- the wall time of `sofamesh hijack apply` (clean apply, and a replacement that changes one
  CIDR), and the engine's own share of it (`engine.apply` in-process, split into
  `Backend.inspect` and `Backend.apply`).

Everything runs inside netlab namespace VMs: one node VM per backend (so the two netfilter
variants never meet in one namespace), a `ref` VM that never gets any rule, and a `peer`
whose address is the (never reached) destination. The load generator is wrk (one thread,
`Connection: close`, so every request is a new connection), the listener is nginx returning
204; both are pinned (see --pin).

    .venv/bin/python bench/rules_scale.py [--rounds 5] [--duration 3] [--sizes 10,10000]
        [--backends iptables,nftables] [--profile] [--write-results]

Needs root and the Debian packages wrk and nginx-light (scripts/dev.sh installs both);
--profile also needs linux-perf. Never a timed assertion: it measures and reports.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib

REPO = Path(__file__).resolve().parent.parent
RESULTS_FILE = REPO / "bench" / "RESULTS.md"
# One section per variant (sizes, backends, pinning), so a trend run does not replace the
# default run's numbers: "<!-- rules_scale:begin VARIANT -->" ... "<!-- rules_scale:end VARIANT -->"
SECTION_MARK = "<!-- rules_scale:{} {} -->"

SEED = 20261122
PROXY_UID = 1337  # as in tests/netns: rules take the number, no passwd entry needed
OUTBOUND_PORT = 15001  # the config's default outbound redirect port
DEST_PORT = 8080  # what wrk dials on the peer; the rules send it to OUTBOUND_PORT
SIDECAR_PORTS = frozenset({15000, 15001, 15006})
EXCLUDABLE = (1025, 65535)
# Documentation/private pools for the blacklist; none covers the lab's 198.51.100.0/24.
# pool -> (weight, shortest prefix length drawn inside it)
CIDR_POOLS = {
    ipaddress.IPv4Network("10.0.0.0/8"): (80, 12),
    ipaddress.IPv4Network("172.16.0.0/12"): (18, 16),
    ipaddress.IPv4Network("203.0.113.0/24"): (2, 28),
}
# A realistic blacklist: mostly hosts and small subnets, some big blocks.
PREFIX_WEIGHTS = {12: 1, 16: 3, 20: 6, 22: 5, 24: 25, 26: 6, 28: 14, 30: 5, 32: 35}
PORT_RANGE_MAX_WIDTH = 32
REQUIRED_PACKAGES = (("wrk", "wrk"), ("nginx-light", "nginx"), ("util-linux", "taskset"))
TARGET_RATIO = 0.95
WARMUP_SECONDS = 1
# Other processes (someone's test run) may share the machine: a sample in which wrk and
# nginx got less than this share of their pinned CPU is taken again, bounded.
MIN_CORE_SHARE = 0.93
MAX_ATTEMPTS = 3
BUDGET_SECONDS = 30 * 60  # hard stop between rounds; the default run takes ~5 minutes
CLK_TCK = os.sysconf("SC_CLK_TCK")
# --profile: kernel symbols of the blacklist lookups (ipset hash:net and bitmap:port; nft
# sets), and of netfilter as a whole (conntrack, NAT, rule evaluation, sets).
SET_LOOKUP_SYMBOLS = re.compile(
    r"^(ip_set_test|hash_net4|bitmap_port|nft_set_do_lookup|nft_lookup_eval|nft_rbtree"
    r"|nft_array_lookup|nft_hash|nft_pipapo|nft_bitmap)"
)
NETFILTER_SYMBOLS = re.compile(r"^(nf_|nft_|ipt_|xt_|ip_set|hash_net|bitmap_port|ipv4_conntrack)")
PERF_FREQUENCY = 2000

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{
    worker_connections 4096;
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen {port} reuseport backlog=4096;
        location / {{
            add_header X-Bench-Listener {port};
            return 204;
        }}
    }}
}}
"""


# -- the blacklists --------------------------------------------------------------------------


def excluded_cidrs(count: int, seed: int = SEED) -> list[ipaddress.IPv4Network]:
    """`count` disjoint, non-mergeable CIDRs with a realistic prefix-length mix.

    Disjoint and without sibling pairs, so the config's collapse keeps exactly `count`
    entries (the set really holds what the label says). Deterministic for a seed.
    """
    rng = random.Random(seed)
    chosen: set[tuple[int, int]] = set()
    covered: set[tuple[int, int]] = set()  # every supernet (>= /8) of a chosen network
    out: list[ipaddress.IPv4Network] = []
    pools = list(CIDR_POOLS)
    pool_weights = [weight for weight, _ in CIDR_POOLS.values()]
    lengths, length_weights = list(PREFIX_WEIGHTS), list(PREFIX_WEIGHTS.values())
    for _ in range(count * 100):
        if len(out) == count:
            break
        pool = rng.choices(pools, pool_weights)[0]
        plen = max(rng.choices(lengths, length_weights)[0], CIDR_POOLS[pool][1])
        host_bits = 32 - plen
        base = int(pool.network_address) >> host_bits
        span = 1 << (plen - pool.prefixlen)
        addr = (base + rng.randrange(span)) << host_bits
        if (addr, plen) in covered or (addr ^ (1 << host_bits), plen) in chosen:
            continue  # covers a chosen one, or would merge with its sibling
        if any((addr & _mask(p), p) in chosen for p in range(8, plen)):
            continue  # inside a chosen one
        chosen.add((addr, plen))
        covered.update((addr & _mask(p), p) for p in range(8, plen + 1))
        out.append(ipaddress.IPv4Network((addr, plen)))
    if len(out) != count:
        raise RuntimeError(f"could not draw {count} disjoint CIDRs from the pools")
    return out


def _mask(plen: int) -> int:
    return (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF


def excluded_port_ranges(count: int, seed: int = SEED) -> list[str]:
    """`count` disjoint, non-adjacent ranges in [1025, 65535] that avoid the destination
    and sidecar ports: one range per equal slot, with a gap so merging never shrinks them."""
    if count == 0:
        return []
    rng = random.Random(seed + 1)
    forbidden = SIDECAR_PORTS | {DEST_PORT}
    first_port, last_port = EXCLUDABLE
    slot = (last_port - first_port + 1) // count
    if slot < 3:
        raise ValueError(f"{count} port ranges do not fit in {EXCLUDABLE}")
    ranges: list[str] = []
    for i in range(count):
        start = first_port + i * slot
        end = start + slot - 2  # the slot's last port stays free: a gap to the next range
        for _ in range(100):
            width = rng.randint(1, min(PORT_RANGE_MAX_WIDTH, end - start + 1))
            first = rng.randint(start, end - width + 1)
            last = first + width - 1
            if not any(first <= p <= last for p in forbidden):
                break
        else:
            raise RuntimeError(f"no port range in slot {start}-{end} avoids {sorted(forbidden)}")
        ranges.append(str(first) if first == last else f"{first}-{last}")
    return ranges


@dataclass(frozen=True)
class Blacklist:
    """The config of one size, and its one-entry-changed twin for the replacement apply."""

    size: int
    cidrs: tuple[str, ...]
    replaced_cidrs: tuple[str, ...]
    ports: tuple[str, ...]

    @classmethod
    def make(cls, size: int) -> Blacklist:
        nets = excluded_cidrs(size + 1)
        cidrs = tuple(map(str, nets[:size]))
        replaced = (*cidrs[:-1], str(nets[size])) if size else cidrs
        return cls(size, cidrs, replaced, tuple(excluded_port_ranges(size // 10)))

    def document(self, *, replaced: bool = False) -> dict[str, Any]:
        return {
            "proxy": {"user": PROXY_UID},
            "outbound": {
                "exclude_cidrs": list(self.replaced_cidrs if replaced else self.cidrs),
                "exclude_ports": list(self.ports),
            },
        }

    @property
    def prefix_lengths(self) -> int:
        """Distinct prefix lengths: what an ipset hash:net lookup iterates over."""
        return len({int(c.rsplit("/", 1)[1]) for c in self.cidrs})

    @property
    def label(self) -> str:
        ports = len(self.ports)
        return f"{self.size} CIDRs + {ports} port range{'' if ports == 1 else 's'}"


def check_blacklist(blacklist: Blacklist, destination: str) -> None:
    """The blacklist must be what it says, and must never cover the traffic's destination."""
    from hijack.config import HijackConfig  # noqa: PLC0415  (bench imports the product late)

    dest = ipaddress.ip_address(destination)
    for replaced in (False, True):
        config = HijackConfig.parse(blacklist.document(replaced=replaced))
        if len(config.outbound_exclude_cidrs4) != blacklist.size:
            raise RuntimeError(f"size {blacklist.size}: the config collapsed the CIDRs")
        if any(dest in net for net in config.outbound_exclude_cidrs4):
            raise RuntimeError(f"size {blacklist.size}: a CIDR covers {destination}")
        if any(r.contains(DEST_PORT) for r in config.outbound_exclude_ports):
            raise RuntimeError(f"size {blacklist.size}: a port range covers {DEST_PORT}")
        if len(config.outbound_exclude_ports) != len(blacklist.ports):
            raise RuntimeError(f"size {blacklist.size}: the config merged port ranges")


# -- measurements ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RateSample:
    rate: float  # connections (= requests) per second, as wrk reports it
    requests: int
    errors: int  # wrk socket errors + non-2xx answers
    cpu_us_per_conn: float  # CPU time of wrk + nginx per connection (user + system)
    core_share: float  # CPU time wrk + nginx got / (wall time x pinned CPUs): 1.0 = all of it
    others_cpu: float  # CPU seconds per second that everything else used (0..nproc)
    attempts: int = 1


@dataclass(frozen=True)
class ApplyTimes:
    cli_clean: float  # `sofamesh hijack apply` after `hijack remove`, wall time
    cli_replace: float  # `sofamesh hijack apply` changing one CIDR, wall time
    engine_clean: float  # engine.apply in-process (no interpreter start, no imports)
    engine_replace: float
    backend_clean: float  # Backend.apply alone (the kernel load)
    backend_replace: float
    inspect_replace: float  # Backend.inspect during the replacement (the idempotency check)
    remove: float  # `sofamesh hijack remove`, wall time


@dataclass(frozen=True)
class Profile:
    """perf cpu-clock samples of wrk + nginx during one run, by kernel symbol family."""

    samples: int
    set_lookup: float  # share of the samples in blacklist set lookups
    netfilter: float  # share in all of netfilter (conntrack, NAT, rules, sets)
    cpu_us_per_conn: float
    top: tuple[tuple[str, float], ...]  # the largest set-lookup symbols


@dataclass
class Results:
    rates: dict[tuple[str, int], list[RateSample]] = field(
        default_factory=lambda: defaultdict(list)
    )
    applies: dict[tuple[str, int], list[ApplyTimes]] = field(
        default_factory=lambda: defaultdict(list)
    )
    reference: list[RateSample] = field(default_factory=list)
    profiles: dict[tuple[str, int], Profile] = field(default_factory=dict)
    rounds_done: int = 0


@dataclass
class Node:
    """A VM with an nginx listener on the outbound port, pinned, and its own state root."""

    vm: Any  # netlab.VM (imported late, like the product)
    backend: str | None
    root: Path
    nginx: subprocess.Popen[str]


class Bench:
    def __init__(self, args: argparse.Namespace, lab: Any, workdir: Path) -> None:
        self.args = args
        self.lab = lab
        self.workdir = workdir
        self.client_cpu, self.server_cpu = _pinning(args.pin)

    def start_node(self, name: str, backend: str | None, stack: ExitStack) -> Node:
        vm = self.lab[name]
        root = self.workdir / name
        (root / "nginx").mkdir(parents=True)
        # Client ports cycle every ~2 s at these rates: let TIME_WAIT ports be reused as they
        # would be on a busy client (the default, 2, allows it only for loopback addresses).
        vm.run(["sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1"])
        conf = root / "nginx" / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=root / "nginx", port=OUTBOUND_PORT))
        log = stack.enter_context((root / "nginx" / "stdout.log").open("w"))
        proc = vm.spawn(
            [
                *("taskset", "-c", self.server_cpu, "nginx", "-p", str(root / "nginx")),
                *("-c", str(conf), "-e", str(root / "nginx" / "nginx-error.log")),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        vm.wait_for_port(OUTBOUND_PORT, host=None, process=proc)
        comm = Path(f"/proc/{proc.pid}/comm").read_text().strip()
        if comm != "nginx":  # nsenter and taskset exec: the pid must be nginx's own
            raise RuntimeError(f"expected nginx at pid {proc.pid}, found {comm!r}")
        return Node(vm, backend, root, proc)

    # -- traffic

    def target(self, node: Node) -> str:
        if node.backend is None:
            return f"http://{node.vm.ipv4}:{OUTBOUND_PORT}/"  # direct to the listener
        return f"http://{self.lab['peer'].ipv4}:{DEST_PORT}/"  # redirected to the listener

    def check_redirect(self, node: Node) -> None:
        """One request by hand: it must land on the node's own listener, not on the peer."""
        host, port = (
            (node.vm.ipv4, OUTBOUND_PORT)
            if node.backend is None
            else (self.lab["peer"].ipv4, DEST_PORT)
        )
        got = node.vm.probe_connect(host, port, send="GET / HTTP/1.0\r\n\r\n")
        if f"X-Bench-Listener: {OUTBOUND_PORT}" not in str(got.get("raw", "")):
            raise RuntimeError(f"{node.vm.name}: {host}:{port} did not reach nginx: {got}")

    def measure_rate(self, node: Node, duration: int) -> RateSample:
        """One wrk run; run again (at most MAX_ATTEMPTS in all) while other processes took
        more than MIN_CORE_SHARE of the pinned CPU from wrk and nginx, keeping the run that
        got the most of it. The criterion is other load only, never the measured rate."""
        best: RateSample | None = None
        for attempt in range(1, MAX_ATTEMPTS + 1):
            sample = self._measure_once(node, duration, attempt)
            if best is None or sample.core_share > best.core_share:
                best = sample
            if sample.core_share >= MIN_CORE_SHARE:
                break
        assert best is not None
        return best

    def _measure_once(self, node: Node, duration: int, attempt: int) -> RateSample:
        argv = ["taskset", "-c", self.client_cpu, "wrk", "-t1", f"-c{self.args.connections}"]
        argv += [f"-d{duration}s", "-H", "Connection: close", self.target(node)]
        nginx_before = _process_cpu(node.nginx.pid)
        children_before = _children_cpu()
        busy_before = _machine_busy()
        start = time.perf_counter()
        done = node.vm.run(argv, timeout=duration + 30)
        wall = time.perf_counter() - start
        busy = _machine_busy() - busy_before
        ours = (_children_cpu() - children_before) + (_process_cpu(node.nginx.pid) - nginx_before)
        rate, requests, errors = parse_wrk(done.stdout)
        cpus = len({self.client_cpu, self.server_cpu})
        return RateSample(
            rate=rate,
            requests=requests,
            errors=errors,
            cpu_us_per_conn=1e6 * ours / requests,
            core_share=ours / (wall * cpus),
            others_cpu=max(0.0, busy - ours) / wall,
            attempts=attempt,
        )

    def profile(self, node: Node, duration: int) -> Profile:
        """Sample every CPU with perf (cpu-clock) while wrk runs, and sort the samples of
        wrk and nginx into blacklist lookups, the rest of netfilter, and everything else.
        perf only observes (it runs in the VM, but -a sees the whole machine)."""
        data = node.root / "perf.data"
        perf = node.vm.spawn(
            [
                *("perf", "record", "-q", "-a", "-e", "cpu-clock", "-F", str(PERF_FREQUENCY)),
                *("-o", str(data), "--", "sleep", str(duration + 1)),
            ],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # perf's start-up is not something to wait for with a condition
        sample = self._measure_once(node, duration, 1)
        try:
            perf.wait(timeout=duration + 30)
        finally:
            node.vm.stop(perf)
        if perf.returncode != 0 or not data.exists():
            raise RuntimeError(f"perf record failed with status {perf.returncode}")
        argv = ["perf", "report", "-i", str(data), "--stdio", "--no-children", "-q"]
        argv += ["--comms", "wrk,nginx", "--sort", "sym", "--percentage", "relative"]
        argv += ["--percent-limit", "0"]
        text = node.vm.run(argv, timeout=120).stdout
        by_comm = node.vm.run(
            [*argv[:7], "-n", "--comms", "wrk,nginx", "--sort", "comm"], timeout=120
        ).stdout
        samples = sum(int(m[1]) for m in re.finditer(r"^\s*[\d.]+%\s+(\d+)\s", by_comm, re.M))
        shares: dict[str, float] = defaultdict(float)
        for line in text.splitlines():
            match = re.match(r"\s*([\d.]+)%\s+\[k\]\s+(\S+)", line)
            if match:
                shares[match[2]] += float(match[1]) / 100
        lookups = {k: v for k, v in shares.items() if SET_LOOKUP_SYMBOLS.match(k)}
        return Profile(
            samples=samples,
            set_lookup=sum(lookups.values()),
            netfilter=sum(v for k, v in shares.items() if NETFILTER_SYMBOLS.match(k)),
            cpu_us_per_conn=sample.cpu_us_per_conn,
            top=tuple(sorted(lookups.items(), key=lambda kv: -kv[1])[:4]),
        )

    def check_counters(self, node: Node, sample: RateSample, size: int) -> None:
        """Every measured connection went through the whole outbound chain: the redirect rule
        (the chain's end) counted at least as many connections as wrk made, and the
        blacklist rules counted none (one SYN per connection reaches the nat table)."""
        _, out = self.sofamesh(node, "hijack", "status", "--json")
        hits: dict[str, int] = defaultdict(int)
        for rule in json.loads(out)["rules"]:
            hits[rule["comment"].split(":")[1]] += rule["packets"]
        excluded = hits["out-excluded-cidrs4"] + hits["out-excluded-ports"]
        if hits["out-redirect"] < sample.requests or excluded:
            raise RuntimeError(
                f"{node.vm.name} ({size} CIDRs): {sample.requests} connections, but the "
                f"rules counted out-redirect {hits['out-redirect']}, blacklist hits {excluded}"
            )

    # -- applies

    def sofamesh(self, node: Node, *args: str) -> tuple[float, str]:
        argv = [sys.executable, "-m", "agent", "--root", str(node.root), *args]
        start = time.perf_counter()
        done = node.vm.run(argv, timeout=300)
        return time.perf_counter() - start, done.stdout

    def cli_apply(self, node: Node, config: Path) -> float:
        assert node.backend is not None
        took, out = self.sofamesh(
            node,
            "hijack",
            "apply",
            "--backend",
            node.backend,
            "--config",
            str(config),
            "--force",  # only the outbound listener runs here; inbound is not measured
        )
        if not out.startswith("applied:"):
            raise RuntimeError(f"{node.vm.name}: apply changed nothing: {out.strip()}")
        return took

    def engine_apply(self, node: Node, config: Path) -> dict[str, float]:
        assert node.backend is not None
        argv = [sys.executable, str(Path(__file__).resolve()), "apply-worker"]
        argv += ["--backend", node.backend, "--config", str(config)]
        done = node.vm.run(argv, timeout=300)
        timings: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
        if not timings.get("changed"):
            raise RuntimeError(f"{node.vm.name}: engine apply changed nothing")
        return timings

    def measure_applies(self, node: Node, blacklist: Blacklist) -> ApplyTimes:
        config = self.config_file(node, blacklist, replaced=False)
        replaced = self.config_file(node, blacklist, replaced=True)
        assert node.backend is not None
        self.sofamesh(node, "hijack", "remove", "--backend", node.backend)
        engine_clean = self.engine_apply(node, replaced)
        remove, _ = self.sofamesh(node, "hijack", "remove", "--backend", node.backend)
        cli_clean = self.cli_apply(node, replaced)
        cli_replace = self.cli_apply(node, config)  # leaves `config` installed for traffic
        # The engine's share of a replacement: back and forth, timing the second one.
        self.engine_apply(node, replaced)
        engine_replace = self.engine_apply(node, config)
        return ApplyTimes(
            cli_clean=cli_clean,
            cli_replace=cli_replace,
            engine_clean=engine_clean["engine_apply"],
            engine_replace=engine_replace["engine_apply"],
            backend_clean=engine_clean["backend_apply"],
            backend_replace=engine_replace["backend_apply"],
            inspect_replace=engine_replace["backend_inspect"],
            remove=remove,
        )

    def config_file(self, node: Node, blacklist: Blacklist, *, replaced: bool) -> Path:
        path = node.root / f"hijack-{blacklist.size}{'-replaced' if replaced else ''}.json"
        if not path.exists():
            path.write_text(json.dumps(blacklist.document(replaced=replaced)))
        return path


def parse_wrk(text: str) -> tuple[float, int, int]:
    """(requests/s, requests, errors) from wrk's report."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    count = re.search(r"(\d+) requests in", text)
    if rate is None or count is None:
        raise RuntimeError(f"cannot read wrk's report:\n{text}")
    return float(rate[1]), int(count[1]), benchlib.wrk_errors(text)


def _process_cpu(pid: int) -> float:
    """User + system seconds of a live process (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _children_cpu() -> float:
    """User + system seconds of the reaped children of this process (wrk, once it ended)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _machine_busy() -> float:
    """CPU seconds all CPUs spent busy since boot (everyone's), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / CLK_TCK


def _pinning(mode: str) -> tuple[str, str]:
    """(client CPU, server CPU) for taskset."""
    last = str((os.cpu_count() or 1) - 1)
    if mode == "split":
        return "0", last
    return last, last


# -- the engine worker (runs inside a node VM) -------------------------------------------------


def apply_worker(backend: str, config_path: str) -> dict[str, float | bool]:
    """engine.apply in this process, with its backend's methods timed from outside.

    The wrappers only measure; the product code runs unchanged (the CLI adds an
    interpreter start, imports, click and the state file on top of this).
    """
    from hijack import engine  # noqa: PLC0415
    from hijack.config import load_config  # noqa: PLC0415
    from hijack.detect import BACKENDS  # noqa: PLC0415

    spent: dict[str, float] = defaultdict(float)

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start

        return wrapper

    cls = BACKENDS[backend]
    for method in ("apply", "inspect", "expected_view", "foreign_objects"):
        setattr(cls, method, timed(f"backend_{method}", getattr(cls, method)))
    engine.plan = timed("plan", engine.plan)
    start = time.perf_counter()
    config = load_config(config_path)
    loaded = time.perf_counter()
    result = engine.apply(config, backend)
    end = time.perf_counter()
    return {
        "load_config": loaded - start,
        "engine_apply": end - loaded,
        "changed": result.changed,
        **spent,
    }


# -- the run ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> tuple[Results, dict[int, Blacklist], dict[str, str]]:
    from netlab import Lab  # noqa: PLC0415

    blacklists = {size: Blacklist.make(size) for size in args.sizes}
    names = ["peer", "ref", *(f"node-{b}" for b in args.backends)]
    results = Results()
    facts = machine_facts()
    started = time.monotonic()
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rules-scale-")))
        lab = stack.enter_context(Lab(names))
        for blacklist in blacklists.values():
            check_blacklist(blacklist, lab["peer"].ipv4)
        bench = Bench(args, lab, workdir)
        ref = bench.start_node("ref", None, stack)
        nodes = {b: bench.start_node(f"node-{b}", b, stack) for b in args.backends}
        log(f"lab up: {', '.join(names)}; warming up")
        bench.check_redirect(ref)
        bench.measure_rate(ref, WARMUP_SECONDS)
        for node in nodes.values():
            bench.measure_applies(node, blacklists[min(blacklists)])
            bench.check_redirect(node)
            bench.measure_rate(node, WARMUP_SECONDS)
        for rnd in range(args.rounds):
            if time.monotonic() - started > BUDGET_SECONDS:
                log(f"time budget of {BUDGET_SECONDS}s spent: stopping after {rnd} rounds")
                break
            # Alternate the order every round, so a drift in machine load hits all cells alike.
            backends = args.backends if rnd % 2 == 0 else args.backends[::-1]
            sizes = args.sizes if rnd % 2 == 0 else args.sizes[::-1]
            results.reference.append(bench.measure_rate(ref, args.duration))
            log(f"round {rnd + 1}/{args.rounds}: no rules {results.reference[-1].rate:,.0f}/s")
            for backend in backends:
                node = nodes[backend]
                for size in sizes:
                    times = bench.measure_applies(node, blacklists[size])
                    bench.check_redirect(node)
                    sample = bench.measure_rate(node, args.duration)
                    if rnd == 0:
                        bench.check_counters(node, sample, size)
                    results.applies[(backend, size)].append(times)
                    results.rates[(backend, size)].append(sample)
                    log(
                        f"round {rnd + 1}/{args.rounds}: {backend} {size}: "
                        f"{sample.rate:,.0f}/s, {sample.cpu_us_per_conn:.1f} us/conn, "
                        f"apply {times.cli_clean:.2f}s"
                    )
            results.rounds_done = rnd + 1
        if args.profile:
            for backend, node in nodes.items():
                for size in (min(args.sizes), max(args.sizes)):
                    bench.measure_applies(node, blacklists[size])
                    results.profiles[(backend, size)] = bench.profile(node, args.duration)
                    log(f"profiled {backend} {size}")
        for node in nodes.values():
            assert node.backend is not None
            bench.sofamesh(node, "hijack", "remove", "--backend", node.backend)
    facts["load_after"] = benchlib.loadavg()
    facts["other_labs_after"] = str(benchlib.other_labs())
    return results, blacklists, facts


def machine_facts() -> dict[str, str]:
    return benchlib.machine_facts({"wrk": "wrk", "nginx": "nginx-light"})


def missing_packages(profile: bool) -> list[str]:
    missing = []
    required = (*REQUIRED_PACKAGES, ("linux-perf", "perf")) if profile else REQUIRED_PACKAGES
    for package, binary in required:
        known = subprocess.run(["dpkg", "-s", package], capture_output=True, text=True, check=False)
        if known.returncode != 0 and shutil.which(binary) is None:
            missing.append(package)
    return missing


# -- report ----------------------------------------------------------------------------------


median = benchlib.median


def report(args: argparse.Namespace, results: Results, blacklists: dict[int, Blacklist]) -> str:
    small = min(args.sizes)
    lines = [
        f"New outbound connections/s through interception (median of {results.rounds_done} "
        f"rounds, wrk {args.duration:g} s each, {args.connections} connections, "
        f"pinning: {args.pin}):",
        "",
        "| backend | blacklist | conn/s | min..max | CPU us/conn (wrk+nginx) | errors "
        "| core share % | others' CPU % | retries |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        _rate_row("none (reference)", "no rules at all", results.reference),
    ]
    for backend in args.backends:
        for size in args.sizes:
            lines.append(_rate_row(backend, blacklists[size].label, results.rates[(backend, size)]))
    lines += [
        "",
        "core share = CPU time wrk + nginx got / wall time on their pinned CPU(s); others' CPU "
        "= what every other process on the machine used meanwhile (% of one CPU); retries = "
        f"runs taken again because the core share was below {MIN_CORE_SHARE:.0%} "
        f"(at most {MAX_ATTEMPTS} runs, the one with the largest share kept).",
        "",
        "Ratios (ratio of medians; in brackets the median of the per-round paired ratios). "
        "`cost` is CPU us per connection (small -> large) and the one-core rate ratio it "
        "implies, cpu(small)/cpu(large), which other load on the machine cannot bend:",
        "",
    ]
    verdicts: list[str] = []
    for backend in args.backends:
        for size in args.sizes:
            if size == small:
                continue
            ratio, paired = _ratios(results.rates[(backend, size)], results.rates[(backend, small)])
            cpu_big = median([s.cpu_us_per_conn for s in results.rates[(backend, size)]])
            cpu_small = median([s.cpu_us_per_conn for s in results.rates[(backend, small)]])
            met = "met" if ratio >= TARGET_RATIO else "NOT MET"
            lines.append(
                f"- {backend}: rate({size})/rate({small}) = {ratio:.3f} [{paired:.3f}], target "
                f">= {TARGET_RATIO}: {met}; cost {cpu_small:.1f} -> {cpu_big:.1f} us "
                f"({cpu_big - cpu_small:+.1f} us), ratio {cpu_small / cpu_big:.3f}"
            )
            if size == max(args.sizes):
                verdicts.append(
                    f"{backend} {met} ({ratio:.3f}; by CPU cost {cpu_small / cpu_big:.3f})"
                )
    if {"iptables", "nftables"} <= set(args.backends):
        for size in args.sizes:
            ratio, paired = _ratios(
                results.rates[("nftables", size)], results.rates[("iptables", size)]
            )
            lines.append(f"- nftables/iptables rate, {size} CIDRs: {ratio:.3f} [{paired:.3f}]")
    for backend in args.backends:
        ratio, paired = _ratios(results.rates[(backend, small)], results.reference)
        lines.append(f"- {backend} with {small} CIDRs / no rules: {ratio:.3f} [{paired:.3f}]")
    lines += [
        "",
        "Apply times in seconds (median). cli = `sofamesh hijack apply` wall time (interpreter "
        "start, imports, state file included); engine = `engine.apply` in-process; backend = "
        "`Backend.apply` alone; inspect = the read-back before a replacement:",
        "",
        "| backend | blacklist | cli clean | cli replace 1 entry | engine clean "
        "| engine replace | backend clean | backend replace | inspect | remove |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for backend in args.backends:
        for size in args.sizes:
            times = results.applies[(backend, size)]
            cells = [
                median([getattr(t, name) for t in times])
                for name in (
                    "cli_clean",
                    "cli_replace",
                    "engine_clean",
                    "engine_replace",
                    "backend_clean",
                    "backend_replace",
                    "inspect_replace",
                    "remove",
                )
            ]
            lines.append(
                f"| {backend} | {blacklists[size].label} | "
                + " | ".join(f"{c:.2f}" for c in cells)
                + " |"
            )
    lines += [
        "",
        "Blacklists: "
        + "; ".join(
            f"{b.size} CIDRs in {b.prefix_lengths} distinct prefix lengths"
            for b in blacklists.values()
        )
        + f" (seed {SEED}).",
    ]
    if results.profiles:
        lines += [
            "",
            "Profile (--profile: perf record -a -e cpu-clock during one extra run; shares of "
            "the wrk + nginx samples; us/conn = share x CPU us per connection of that run):",
            "",
            "| backend | blacklist | samples | set lookups | us/conn | all netfilter "
            "| us/conn | top set-lookup symbols |",
            "|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for (backend, size), prof in results.profiles.items():
            top = ", ".join(f"{name} {100 * share:.2f}%" for name, share in prof.top) or "-"
            lines.append(
                f"| {backend} | {blacklists[size].label} | {prof.samples} "
                f"| {100 * prof.set_lookup:.2f}% | {prof.set_lookup * prof.cpu_us_per_conn:.2f} "
                f"| {100 * prof.netfilter:.1f}% | {prof.netfilter * prof.cpu_us_per_conn:.1f} "
                f"| {top} |"
            )
    lines += [
        "",
        f"Verdict, rate({max(args.sizes)})/rate({small}) >= {TARGET_RATIO}: "
        + "; ".join(verdicts)
        + ".",
    ]
    return "\n".join(lines) + "\n"


def _rate_row(backend: str, label: str, samples: list[RateSample]) -> str:
    rates = [s.rate for s in samples]
    return (
        f"| {backend} | {label} | {median(rates):,.0f} | {min(rates):,.0f}..{max(rates):,.0f} "
        f"| {median([s.cpu_us_per_conn for s in samples]):.1f} "
        f"| {sum(s.errors for s in samples)} "
        f"| {median([100 * s.core_share for s in samples]):.0f} "
        f"| {median([100 * s.others_cpu for s in samples]):.0f} "
        f"| {sum(s.attempts - 1 for s in samples)} |"
    )


def _ratios(top: list[RateSample], bottom: list[RateSample]) -> tuple[float, float]:
    ratio = median([s.rate for s in top]) / median([s.rate for s in bottom])
    paired = median([a.rate / b.rate for a, b in zip(top, bottom, strict=False)])
    return ratio, paired


def variant(args: argparse.Namespace) -> str:
    sizes = ",".join(map(str, args.sizes))
    return f"sizes={sizes} backends={','.join(args.backends)} pin={args.pin}"


def write_results(key: str, command: str, facts: dict[str, str], table: str) -> None:
    begin, end = SECTION_MARK.format("begin", key), SECTION_MARK.format("end", key)
    section = "\n".join(
        [
            begin,
            f"## Rules scale (R-HJ-7): {key}",
            "",
            f"Command: `{command}`",
            "",
            f"Date: {facts['date']}. Machine: {facts['nproc']} CPUs ({facts['cpu']}), "
            f"kernel {facts['kernel']}; wrk {facts['wrk']}, nginx-light {facts['nginx']}. "
            f"Load average before/after: {facts['load_before']} / {facts['load_after']}; "
            "Other processes' labs (someone's netns tests) present at start/end: "
            f"{facts['other_labs']} / {facts['other_labs_after']}. Pinning: wrk and nginx "
            + ("share the last CPU" if "pin=shared" in key else "on CPU 0 and on the last CPU")
            + "; each VM sets net.ipv4.tcp_tw_reuse=1 (see the script).",
            "",
            table.rstrip("\n"),
            end,
        ]
    )
    benchlib.replace_section(begin, end, section)


# -- command line ----------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"rules_scale: {message}", file=sys.stderr, flush=True)


def _int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("expected positive integers like 10,10000")
    return sorted(set(values))


def _backend_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in ("iptables", "nftables") for v in values):
        raise argparse.ArgumentTypeError("expected iptables, nftables or both")
    return list(dict.fromkeys(values))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/rules_scale.py", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (>= 3; default 5)")
    p.add_argument("--duration", type=int, default=3, help="seconds of wrk per measurement")
    p.add_argument("--sizes", type=_int_list, default=[10, 10000], help="CIDR counts")
    p.add_argument("--backends", type=_backend_list, default=["iptables", "nftables"])
    p.add_argument("--connections", type=int, default=32, help="wrk's concurrent connections")
    p.add_argument(
        "--pin",
        choices=("shared", "split"),
        default="shared",
        help="shared: wrk and nginx on the last CPU, so the rate is 1 / (all CPU per "
        "connection) of one core; split: wrk on CPU 0, nginx on the last CPU",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="after the rounds, one perf-sampled run per backend at the smallest and largest "
        "size (needs linux-perf)",
    )
    p.add_argument("--write-results", action="store_true", help=f"update {RESULTS_FILE.name}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["apply-worker"]:
        worker = argparse.ArgumentParser(prog="rules_scale.py apply-worker")
        worker.add_argument("--backend", required=True)
        worker.add_argument("--config", required=True)
        wargs = worker.parse_args(argv[1:])
        print(json.dumps(apply_worker(wargs.backend, wargs.config)))
        return 0
    args = parser().parse_args(argv)
    if args.rounds < 3:
        parser().error("--rounds must be at least 3 (the result is a median)")
    if len(args.sizes) < 2:
        parser().error("--sizes needs at least two sizes to compare")
    if os.geteuid() != 0:
        log("needs root: it builds network-namespace VMs (never touching this host's own)")
        return 3
    missing = missing_packages(args.profile)
    if missing:
        log(f"missing Debian packages; install them with: apt-get install -y {' '.join(missing)}")
        return 2
    python = Path(sys.executable)
    shown = python.relative_to(REPO) if python.is_relative_to(REPO) else python
    command = shlex.join([str(shown), "bench/rules_scale.py", *argv])
    results, blacklists, facts = run(args)
    table = report(args, results, blacklists)
    print(table, end="")
    if args.write_results:
        write_results(variant(args), command, facts, table)
        log(f"wrote {RESULTS_FILE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
