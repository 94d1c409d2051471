"""Sidecar config and counters: defaults, bad input naming the field, merging, Prometheus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar import stats
from sidecar.config import SidecarConfig, load_sidecar_config
from sidecar.errors import SidecarConfigError

pytestmark = pytest.mark.unit


def test_empty_document_means_all_defaults(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text("{}")
    config = load_sidecar_config(tmp_path / "c.json")
    assert (config.inbound_port, config.outbound_port, config.admin_port) == (15006, 15001, 15000)
    assert config.admin_address == "127.0.0.1"
    assert config.workers == 1
    assert config.limit_for(8080) == 0
    assert config.inbound_source == "127.0.0.6"


def test_limits_and_round_trip() -> None:
    config = SidecarConfig.parse({"limits": {"8080": 5, "9090": 2147483647, "7070": 0}})
    assert config.limit_for(8080) == 5
    assert config.limit_for(9090) == 2147483647
    assert config.limit_for(7070) == 0
    assert SidecarConfig.parse(config.to_document()) == config
    assert SidecarConfig.parse(config.to_document()).digest == config.digest


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"limits": {"8080": 2147483648}}, "limits.8080"),
        ({"limits": {"8080": -1}}, "limits.8080"),
        ({"limits": {"80x": 1}}, "limits.80x"),
        ({"workers": 0}, "workers"),
        ({"inbound": {"port": 70000}}, "inbound.port"),
        ({"admin": {"port": 15006}}, "admin.port"),
        ({"admin": {"address": "localhost"}}, "admin.address"),
        ({"original_dst": "magic"}, "original_dst"),
        ({"timeouts": {"connect": 0}}, "timeouts.connect"),
        ({"log_level": "VERBOSE"}, "log_level"),
        ({"surprise": 1}, "surprise"),
        ({"timeouts": {"whenever": 1}}, "timeouts.whenever"),
    ],
)
def test_bad_input_names_the_field(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(SidecarConfigError) as info:
        SidecarConfig.parse(doc)
    assert info.value.field == field


def test_counters_merge_across_workers_and_render_as_prometheus() -> None:
    a, b = stats.Stats(), stats.Stats()
    for s, n in ((a, 3), (b, 4)):
        port = s.port("inbound", 8080)
        port.requests += n
        port.bytes_sent += 100 * n
        for _ in range(n):
            port.observe(200, 0.002)
    port = b.port("inbound", 8080)
    port.observe(503, 0.0)
    port.limit_rejections += 1
    merged = stats.merge([a.snapshot(), b.snapshot()])
    assert len(merged) == 1
    entry = merged[0]
    assert entry["requests_total"] == 7
    assert entry["bytes_sent"] == 700
    assert entry["responses"]["2xx"] == 7
    assert entry["responses"]["5xx"] == 1
    assert entry["latency"]["count"] == 8
    assert entry["latency"]["buckets"]["0.0025"] == 8
    text = stats.prometheus(merged, workers=2, ready=True)
    assert 'sofamesh_sidecar_requests_total{direction="inbound",port="8080"} 7' in text
    assert 'sofamesh_sidecar_responses_total{direction="inbound",port="8080",class="2xx"} 7' in text
    assert 'sofamesh_sidecar_limit_rejections_total{direction="inbound",port="8080"} 1' in text
    assert (
        'sofamesh_sidecar_request_duration_seconds_count{direction="inbound",port="8080"} 8' in text
    )
    assert "sofamesh_sidecar_workers 2" in text


def test_carried_over_counters_drop_the_gauges() -> None:
    s = stats.Stats()
    port = s.port("outbound", 443)
    port.active_connections = 3
    port.requests = 9
    carried = stats.without_gauges(s.snapshot())
    assert carried[0]["active_connections"] == 0
    assert carried[0]["requests_total"] == 9
