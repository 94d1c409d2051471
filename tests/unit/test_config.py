"""The interception config: defaults, parsing, and rejection of bad input naming the field
(R-HJ-1, R-HJ-2, R-SF-2)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from hijack.config import HijackConfig, load_config
from hijack.errors import ConfigError
from hijack.values import PortRange

pytestmark = pytest.mark.unit


def test_empty_document_means_all_defaults() -> None:
    config = HijackConfig.parse({})
    assert config.inbound_redirect_port == 15006
    assert config.outbound_redirect_port == 15001
    assert config.proxy_admin_port == 15000
    assert config.proxy_user == "sofamesh-proxy"
    assert config.ssh_ports == (22,)
    assert config.inbound_exclude_ports == ()
    assert config.outbound_exclude_cidrs4 == ()
    assert config.ipv6 == "auto"
    assert config.proxy_ports == (15000, 15001, 15006)


def test_empty_file_and_json_and_yaml(tmp_path: Path) -> None:
    (tmp_path / "e.json").write_text("{}")
    (tmp_path / "n.yaml").write_text("")
    (tmp_path / "c.yaml").write_text(
        "inbound:\n  exclude_ports: [8000-8100, 9090]\n"
        "outbound:\n  exclude_cidrs: [10.0.0.0/8]\n  exclude_ports: ['3306']\n"
    )
    assert load_config(tmp_path / "e.json") == HijackConfig.parse({})
    assert load_config(tmp_path / "n.yaml") == HijackConfig.parse({})
    config = load_config(tmp_path / "c.yaml")
    assert config.inbound_exclude_ports == (PortRange(8000, 8100), PortRange(9090, 9090))
    assert config.outbound_exclude_cidrs4 == (ipaddress.ip_network("10.0.0.0/8"),)
    assert config.outbound_exclude_ports == (PortRange(3306, 3306),)


def test_lists_are_canonical_merged_and_split_by_family() -> None:
    config = HijackConfig.parse(
        {
            "inbound": {"exclude_ports": ["2000-3000", 2500, "3001", 1025]},
            "outbound": {"exclude_cidrs": ["10.1.0.0/16", "10.0.0.0/8", "2001:db8::/32"]},
        }
    )
    assert config.inbound_exclude_ports == (PortRange(1025, 1025), PortRange(2000, 3001))
    assert [str(n) for n in config.outbound_exclude_cidrs4] == ["10.0.0.0/8"]
    assert [str(n) for n in config.outbound_exclude_cidrs6] == ["2001:db8::/32"]


def test_document_round_trip() -> None:
    doc: dict[str, Any] = {
        "inbound": {"exclude_ports": ["8000-8100"]},
        "outbound": {"exclude_cidrs": ["10.0.0.0/8", "2001:db8::/32"], "exclude_ports": ["3306"]},
        "proxy": {"user": 1337},
        "console": ["console.example:8443"],
        "ssh_ports": [22, 2222],
        "ipv6": False,
    }
    config = HijackConfig.parse(doc)
    assert HijackConfig.parse(config.to_document()) == config


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"inbound": {"exclude_ports": [80]}}, "inbound.exclude_ports[0]"),
        ({"inbound": {"exclude_ports": [1024]}}, "inbound.exclude_ports[0]"),
        ({"inbound": {"exclude_ports": [8080, 70000]}}, "inbound.exclude_ports[1]"),
        ({"inbound": {"exclude_ports": ["9000-8000"]}}, "inbound.exclude_ports[0]"),
        ({"inbound": {"exclude_ports": ["http"]}}, "inbound.exclude_ports[0]"),
        ({"inbound": {"exclude_ports": [True]}}, "inbound.exclude_ports[0]"),
        ({"inbound": {"exclude_ports": "8080"}}, "inbound.exclude_ports"),
        ({"outbound": {"exclude_ports": ["1-2000"]}}, "outbound.exclude_ports[0]"),
        ({"outbound": {"exclude_cidrs": ["10.0.0.0/33"]}}, "outbound.exclude_cidrs[0]"),
        ({"outbound": {"exclude_cidrs": ["10.0.0.1/8"]}}, "outbound.exclude_cidrs[0]"),
        ({"outbound": {"exclude_cidrs": [42]}}, "outbound.exclude_cidrs[0]"),
        ({"outbound": {"redirect_port": 0}}, "outbound.redirect_port"),
        ({"outbound": {"redirect_port": 15006}}, "outbound.redirect_port"),
        ({"inbound": {"redirect_port": "x"}}, "inbound.redirect_port"),
        ({"proxy": {"admin_port": 15001}}, "proxy.admin_port"),
        ({"proxy": {"user": "root"}}, "proxy.user"),
        ({"proxy": {"user": 0}}, "proxy.user"),
        ({"proxy": {"user": "bad name"}}, "proxy.user"),
        ({"proxy": {"ports": [1, 2, 3, 4, 5, 6, 7, 8, 9]}}, "proxy.ports"),
        ({"ssh_ports": [22, 99999]}, "ssh_ports[1]"),
        ({"console": ["no-port"]}, "console[0]"),
        ({"ipv6": "maybe"}, "ipv6"),
        ({"garbage": 1}, "garbage"),
        ({"inbound": {"exclude": []}}, "inbound.exclude"),
        ({"outbound": []}, "outbound"),
        ([], "config"),
    ],
)
def test_bad_input_names_the_field(doc: Any, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        HijackConfig.parse(doc)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_unreadable_and_malformed_files_name_the_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ConfigError, match="not valid json"):
        load_config(tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (8080, (8080, 8080)),
        ("8080", (8080, 8080)),
        ("8000-8100", (8000, 8100)),
        ("8000:8100", (8000, 8100)),
    ],
)
def test_port_range_parses_its_forms(text: object, expected: tuple[int, int]) -> None:
    assert PortRange.parse(text, "f", minimum=1025) == PortRange(*expected)


def test_console_endpoints_parse_urls_and_host_ports() -> None:
    config = HijackConfig.parse(
        {"console": ["https://c.example/api", "10.0.0.5:8080", "[2001:db8::5]:9"]}
    )
    assert [str(c) for c in config.console] == ["c.example:443", "10.0.0.5:8080", "[2001:db8::5]:9"]
