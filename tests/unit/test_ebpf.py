"""The eBPF backend's planning, without a kernel: map contents from a plan, the view both
sides derive from them, key encodings, and `auto` never picking eBPF where it must not."""

from __future__ import annotations

import ipaddress

import pytest

from hijack.backends.ebpf import EbpfBackend, EbpfOptions, cgroup2_root
from hijack.backends.ebpf_state import (
    CLASS_DIRECT,
    CLASS_EXCLUDED,
    CLASS_INTERCEPT,
    CLASS_PROXY,
    CLASS_SSH,
    IN,
    OUT,
    Contents,
    Observed,
    cidr_key,
    console_key,
    parse_cidr_key,
    parse_console_key,
)
from hijack.builder import build_plan
from hijack.command import RecordingRunner
from hijack.config import HijackConfig
from hijack.detect import ebpf_unavailable
from hijack.errors import ConfigError
from hijack.model import Plan
from hijack.resolve import resolve
from hijack.values import PortRange

pytestmark = pytest.mark.unit

DOC = {
    "inbound": {"exclude_ports": ["8000-8100"]},
    "outbound": {"exclude_cidrs": ["10.0.0.0/8", "2001:db8::/32"], "exclude_ports": [3306]},
    "proxy": {"user": 1337},
    "console": ["192.0.2.10:8443"],
    "ssh_ports": [22, 2222],
    "ipv6": True,
}


def plan_of(doc: dict[str, object]) -> Plan:
    resolved = resolve(HijackConfig.parse(doc), require_user=False)
    return build_plan(resolved)


@pytest.fixture
def contents(monkeypatch: pytest.MonkeyPatch) -> Contents:
    monkeypatch.setattr("hijack.resolve.host_has_ipv6", lambda: True)
    return Contents.from_plan(plan_of(DOC))


def test_port_classes_follow_the_rule_order(contents: Contents) -> None:
    def cls(port: int, direction: int) -> int:
        return contents.classes[port * 2 + direction]

    assert cls(80, IN) == cls(80, OUT) == CLASS_INTERCEPT
    assert cls(443, IN) == cls(443, OUT) == CLASS_DIRECT  # 1..1024 but 80: never
    assert cls(22, IN) == cls(2222, OUT) == CLASS_SSH  # SSH wins over "above 1024"
    assert cls(15001, IN) == cls(15006, OUT) == cls(15000, IN) == CLASS_PROXY
    assert cls(8050, IN) == CLASS_EXCLUDED and cls(8050, OUT) == CLASS_INTERCEPT
    assert cls(3306, OUT) == CLASS_EXCLUDED and cls(3306, IN) == CLASS_INTERCEPT
    assert contents.ranges(CLASS_EXCLUDED, IN) == (PortRange(8000, 8100),)


def test_settings_cidrs_and_console(contents: Contents) -> None:
    s = contents.settings
    assert (s.enabled, s.proxy_uid, s.ipv6, s.in_port, s.out_port) == (
        True,
        1337,
        True,
        15006,
        15001,
    )
    assert contents.cidr4 == (ipaddress.IPv4Network("10.0.0.0/8"),)
    assert contents.cidr6 == (ipaddress.IPv6Network("2001:db8::/32"),)
    assert contents.console == (("192.0.2.10", 8443),)
    packed = s.pack(1)
    assert type(s).unpack(packed) == (s, 1)


def test_the_view_changes_with_every_value_that_matters(contents: Contents) -> None:
    links = ("connect4", "inbound")
    base = Observed(contents, links, (0, 1), 42, True)
    assert base.view() == Observed(contents, links, (0, 1), 42, True).view()
    other = Contents.from_plan(plan_of({**DOC, "ssh_ports": [22]}))
    assert Observed(other, links, (0, 1), 42, True).view().digest != base.view().digest
    # A sidecar socket missing from the map is drift, named after its rule.
    drift = base.view().diff(Observed(contents, links, (1,), 42, True).view())
    assert any("missing rule sofamesh:in-redirect:" in line for line in drift)
    # Programs from another build are drift too.
    assert Observed(contents, links, (0, 1), 43, True).view() != base.view()


def test_key_encodings_round_trip() -> None:
    for text, family in (("10.1.0.0/16", 4), ("2001:db8:1::/48", 6)):
        net = ipaddress.ip_network(text)
        key = cidr_key(net, 1)
        assert len(key) == (9 if family == 4 else 21)
        assert parse_cidr_key(key, family) == (1, net)
    for addr in ("192.0.2.10", "2001:db8::10"):
        assert parse_console_key(console_key(addr, 8443)) == (addr, 8443)


def test_apply_needs_the_proxy_uid_but_dry_run_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hijack.resolve.host_has_ipv6", lambda: False)
    plan = plan_of({"proxy": {"user": "no-such-user-here"}})
    with pytest.raises(ConfigError, match=r"proxy\.user"):
        Contents.from_plan(plan)
    text = EbpfBackend(RecordingRunner()).render(plan)
    assert "proxy_uid=4294967295" in text
    assert "map cidr6" not in text  # IPv6 off: said in the notes, no v6 map contents


def test_too_many_prefixes_are_refused_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hijack.resolve.host_has_ipv6", lambda: False)
    monkeypatch.setattr("hijack.backends.ebpf_state.MAX_CIDRS_PER_FAMILY", 3)
    nets = [f"10.0.{i}.1/32" for i in range(4)]  # 4 prefixes that do not merge
    doc = {"outbound": {"exclude_cidrs": nets}, "proxy": {"user": 1337}}
    with pytest.raises(ConfigError, match=r"outbound\.exclude_cidrs: 4 IPv4 prefixes"):
        Contents.from_plan(plan_of(doc))


def test_cgroup2_is_found_from_the_mount_table() -> None:
    mounts = (
        "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
    )
    assert str(cgroup2_root(mounts)) == "/sys/fs/cgroup/unified"
    assert cgroup2_root("proc /proc proc rw 0 0\n") is None


def test_auto_does_not_pick_ebpf_on_an_old_kernel_and_says_why() -> None:
    runner = RecordingRunner(files={"/proc/sys/kernel/osrelease": "5.4.0-1-amd64\n"})
    reason = ebpf_unavailable(runner, EbpfOptions(cgroup=None))
    assert reason is not None
    assert "older than 5.9" in reason or "explicit --cgroup" in reason
