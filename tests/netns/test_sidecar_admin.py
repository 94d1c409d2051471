"""The admin API on 127.0.0.1:15000 (R-SC-4, R-OB-4), with two workers whose numbers it
combines: health, readiness, stats and metrics equal to what clients counted, config and
digest, log level at runtime; and a bad config file at start is exit 2 naming the field."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.netns.sidecar_env import (
    HOLD_PORT,
    METRICS_PORT,
    SidecarLab,
    sidecar_lab,
)
from tests.netns.sidecar_proc import PROXY_UID, sample

pytestmark = pytest.mark.netns

WORKERS = 2
CONFIG: dict[str, Any] = {"workers": WORKERS, "limits": {str(HOLD_PORT): 7}}
ERROR_KINDS = ("upstream_connect", "upstream_reset", "downstream_reset", "timeout", "bad_request")
LEVELS = ("FATAL", "ERROR", "WARN", "INFO", "DEBUG", "TRACE")


@pytest.fixture(scope="module")
def env() -> Iterator[SidecarLab]:
    with sidecar_lab(CONFIG) as the_env:
        yield the_env


def test_liveness_and_readiness(env: SidecarLab) -> None:
    status, body = env.sidecar.admin("GET", "/healthz")
    assert (status, body.strip()) == (200, "ok")
    status, body = env.sidecar.admin("GET", "/ready")
    assert (status, body.strip()) == (200, "ready")


def test_stats_describe_the_running_process(env: SidecarLab) -> None:
    stats = env.sidecar.stats()
    assert env.sidecar.proc is not None
    assert stats["pid"] == env.sidecar.proc.pid
    assert (stats["workers"], stats["ready"], stats["draining"]) == (WORKERS, True, False)
    assert stats["config_digest"] == env.sidecar.digest()
    assert stats["log_level"] == "INFO"


def test_workers_are_separate_processes_serving_the_inbound_listener(env: SidecarLab) -> None:
    listeners = env.node.run(["ss", "-Hltnp", "sport", "=", ":15006"]).stdout
    assert env.sidecar.proc is not None
    holders = {int(p) for p in re.findall(r"pid=(\d+)", listeners)} - {env.sidecar.proc.pid}
    assert len(holders) == WORKERS, listeners  # (the main process may hold it too)
    assert holders <= env.sidecar.pids()


def test_stats_and_metrics_equal_what_the_clients_counted(env: SidecarLab) -> None:
    """Forty connections (so both workers serve some), one request each: 24 x 200, 16 x 404."""
    paths = ["/one.txt", "/one.txt", "/missing", "/small.bin", "/missing"] * 8
    counted = env.run_app(env.client, "requests", env.node.ipv4, str(METRICS_PORT), *paths)
    assert counted["statuses"] == [404 if p == "/missing" else 200 for p in paths]
    k, missing = len(paths), paths.count("/missing")
    ok = k - missing

    got = env.sidecar.wait_counters(
        "inbound",
        METRICS_PORT,
        lambda c: c.get("requests_total") == k and c.get("active_connections") == 0,
        f"{k} requests counted on port {METRICS_PORT}",
    )
    assert got["requests_total"] == k
    assert (got["responses.2xx"], got["responses.4xx"]) == (ok, missing)
    assert got["responses.1xx"] + got["responses.3xx"] + got["responses.5xx"] == 0
    assert got["bytes_received"] == counted["sent"]
    assert got["bytes_sent"] == counted["received"]
    assert (got["connections_total"], got["protocol_connections.http"]) == (k, k)
    assert (got["active_connections"], got["active_requests"]) == (0, 0)
    assert got["limit_rejections"] == 0
    assert sum(v for key, v in got.items() if key.startswith("errors.")) == 0
    assert (got["latency.count"], got["latency.buckets.+Inf"]) == (k, k)

    metrics = env.sidecar.metrics()
    port = {"direction": "inbound", "port": str(METRICS_PORT)}
    expected: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {
        ("sofamesh_sidecar_requests_total", ()): k,
        ("sofamesh_sidecar_responses_total", (("class", "2xx"),)): ok,
        ("sofamesh_sidecar_responses_total", (("class", "4xx"),)): missing,
        ("sofamesh_sidecar_bytes_received_total", ()): counted["sent"],
        ("sofamesh_sidecar_bytes_sent_total", ()): counted["received"],
        ("sofamesh_sidecar_connections_total", (("protocol", "http"),)): k,
        ("sofamesh_sidecar_request_duration_seconds_count", ()): k,
        ("sofamesh_sidecar_request_duration_seconds_bucket", (("le", "+Inf"),)): k,
        ("sofamesh_sidecar_limit_rejections_total", ()): 0,
        ("sofamesh_sidecar_active_connections", ()): 0,
        ("sofamesh_sidecar_active_requests", ()): 0,
        **{("sofamesh_sidecar_errors_total", (("kind", kind),)): 0 for kind in ERROR_KINDS},
    }
    shown = {key: sample(metrics, key[0], **port, **dict(key[1])) for key in expected}
    assert shown == expected
    assert sample(metrics, "sofamesh_sidecar_request_duration_seconds_sum", **port) is not None
    assert sample(metrics, "sofamesh_sidecar_workers") == WORKERS
    assert sample(metrics, "sofamesh_sidecar_ready") == 1


def test_reload_changes_the_config_and_its_digest(env: SidecarLab) -> None:
    old = env.sidecar.digest()
    status, doc = env.sidecar.reload({**CONFIG, "limits": {str(HOLD_PORT): 9}})
    try:
        assert status == 200, doc
        assert doc["digest"] != old
        _, shown = env.sidecar.admin_json("GET", "/config")
        assert shown["digest"] == doc["digest"]
        assert shown["config"]["limits"] == {str(HOLD_PORT): 9}
        assert env.sidecar.stats()["config_digest"] == doc["digest"]
        again = env.sidecar.admin_json("POST", "/reload")
        assert again == (200, {"digest": doc["digest"]})  # same file, same digest
    finally:
        assert env.sidecar.reload(CONFIG)[0] == 200
    assert env.sidecar.digest() == old


def test_a_bad_reload_names_the_field_and_keeps_the_config(env: SidecarLab) -> None:
    old = env.sidecar.digest()
    try:
        status, doc = env.sidecar.reload({**CONFIG, "timeouts": {"drain": -1}})
        assert status == 400
        assert doc["error"].startswith("timeouts.drain: "), doc
        assert env.sidecar.digest() == old
    finally:
        env.sidecar.write_config(CONFIG)


def test_the_log_level_is_read_and_changed_at_runtime(env: SidecarLab) -> None:
    assert env.sidecar.admin_json("GET", "/logging") == (200, {"level": "INFO"})
    try:
        for level in LEVELS:
            assert env.sidecar.admin_json("POST", f"/logging?level={level}") == (
                200,
                {"level": level},
            )
            assert env.sidecar.admin_json("GET", "/logging") == (200, {"level": level})
            assert env.sidecar.stats()["log_level"] == level
        status, doc = env.sidecar.admin_json("POST", "/logging?level=LOUD")
        assert status == 400
        assert doc["error"].startswith("level: "), doc
        assert env.sidecar.admin_json("GET", "/logging") == (200, {"level": LEVELS[-1]})
    finally:
        env.sidecar.admin("POST", "/logging?level=INFO")


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"limits": {"8080": 2147483648}}, "limits.8080"),
        ({"workers": 0}, "workers"),
        ({"admin": {"port": 70000}}, "admin.port"),
        ({"log_level": "LOUD"}, "log_level"),
        ({"inbound": {"port": 15000}}, "admin.port"),  # collides with the admin port
        ({"surprise": 1}, "surprise"),
    ],
)
def test_a_bad_config_file_at_start_exits_2_with_one_line_naming_the_field(
    env: SidecarLab, doc: dict[str, Any], field: str
) -> None:
    bad = env.root / "bad-sidecar.json"
    bad.write_text(json.dumps(doc))
    bad.chmod(0o644)
    done = env.node.run(env.sidecar.argv(config=bad), user=PROXY_UID, check=False, timeout=30)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert field in lines[0]
