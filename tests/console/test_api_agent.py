"""Agent endpoints (signed): register, config long-poll, status, metrics; and the sidecar
list and monitoring views they feed (R-AG-5, R-AG-6, R-CO-5, R-OB-1..3)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from hijack.config import HijackConfig
from netlab import wait_until
from tests.console.agent_http import signed
from tests.console.conftest import World, db_snapshot
from tests.console.test_api_apps import WEB, fields

pytestmark = pytest.mark.unit

STATUS = {
    "app": "web",
    "ip": "10.0.0.1",
    "hostname": "vm-1",
    "sidecar_status": "Running",
    "healthy": True,
    "version": "0.1.0",
    "created_at": "2026-01-02T03:04:05+00:00",
    "backend": "nftables",
    "rule_digest": "sha256:abc",
    "ipv6": False,
}


class Agent:
    def __init__(self, world: World) -> None:
        self.world = world

    def __call__(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        w = self.world
        return signed(w.url, w.key_id, w.secret, method, f"/api/v1/agent/{path}", **kwargs)

    def config(self, version: int = 0, wait: int = 0, ip: str = "10.0.0.1") -> httpx.Response:
        query = {"app": "web", "ip": ip, "version": version, "wait": wait}
        return self("GET", "config", query=query)


@pytest.fixture
def agent(operator: httpx.Client, world: World) -> Agent:
    assert operator.post("/api/v1/apps", json=WEB).status_code == 201
    return Agent(world)


def test_whoami_names_the_keys_scope(agent: Agent, world: World) -> None:
    answer = agent("GET", "whoami")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "key_id": world.key_id,
        "tenant": world.tenant,
        "workspace": world.workspace,
        "instance_id": world.instance,
    }
    assert world.secret not in answer.text


def test_register(agent: Agent, operator: httpx.Client, world: World) -> None:
    answer = agent("POST", "register", body={"app": "web", "ip": "10.0.0.1", "hostname": "vm-1"})
    assert answer.status_code == 200, answer.text
    node = operator.get("/api/v1/apps/web").json()["nodes"][0]
    assert answer.json()["config_version"] == node["config_version"]
    assert node["registered"] is True
    assert node["hostname"] == "vm-1"

    before = db_snapshot(world.backend.engine)
    for body, status, loc in [
        ({"app": "nope", "ip": "10.0.0.1", "hostname": "h"}, 404, ["body", "app"]),
        ({"app": "web", "ip": "10.0.0.9", "hostname": "h"}, 404, ["body", "ip"]),
        ({"app": "web", "ip": "10.0.0.1"}, 422, ["body", "hostname"]),
        ({"app": "web", "ip": "10.0.0.1", "hostname": "a b"}, 422, ["body", "hostname"]),
        ({"app": "w b", "ip": "10.0.0.1", "hostname": "h"}, 422, ["body", "app"]),
        ({"app": "web", "ip": "1.2.3", "hostname": "h"}, 422, ["body", "ip"]),
    ]:
        bad = agent("POST", "register", body=body)
        assert bad.status_code == status, bad.text
        assert loc in fields(bad)
    assert db_snapshot(world.backend.engine) == before


def test_config_document(agent: Agent, operator: httpx.Client) -> None:
    operator.put(
        "/api/v1/apps/web/params",
        json={
            "inbound_exclude_ports": ["8000-8100", "8050-8200", 9000],
            "outbound_exclude_cidrs": ["2001:db8::/32", "10.1.0.0/16", "10.0.0.0/16"],
            "outbound_exclude_ports": [3306],
        },
    )
    operator.put("/api/v1/apps/web/governance", json={"limits": {"8080": 100}})
    answer = agent.config()
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert doc["hijack_enabled"] is False
    assert doc["sidecar"] == {"limits": {"8080": 100, "8081": 0}}
    hijack = doc["hijack"]
    assert hijack["inbound"]["exclude_ports"] == ["8000-8200", "9000"]
    assert hijack["outbound"]["exclude_cidrs"] == ["10.0.0.0/15", "2001:db8::/32"]
    assert hijack["outbound"]["exclude_ports"] == ["3306"]
    assert hijack["console"] == [agent.world.url.removeprefix("http://")]
    # The agent's own parser accepts it, and it is already in canonical form.
    assert HijackConfig.parse(hijack).to_document() == hijack


def test_long_poll_wakes_on_switch(agent: Agent, operator: httpx.Client) -> None:
    version = agent.config().json()["version"]
    result: dict[str, Any] = {}

    def poll() -> None:
        started = time.monotonic()
        result["answer"] = agent.config(version=version, wait=20)
        result["done"] = time.monotonic()
        result["started"] = started

    thread = threading.Thread(target=poll)
    thread.start()
    agent.world.backend.server.wait_for_long_polls()
    flipped = time.monotonic()
    operator.put("/api/v1/apps/web/nodes/10.0.0.1/hijack", json={"enabled": True})
    thread.join(15)
    answer = result["answer"]
    assert answer.status_code == 200
    assert answer.json()["hijack_enabled"] is True
    assert answer.json()["version"] > version
    assert result["done"] - flipped < 1.0


@pytest.mark.parametrize("change", ["params", "governance", "node removed"])
def test_long_poll_wakes_on_other_changes(
    agent: Agent, operator: httpx.Client, change: str
) -> None:
    version = agent.config().json()["version"]
    result: dict[str, httpx.Response] = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("answer", agent.config(version=version, wait=20))
    )
    thread.start()
    agent.world.backend.server.wait_for_long_polls()
    started = time.monotonic()
    if change == "params":
        operator.put("/api/v1/apps/web/params", json={"outbound_exclude_ports": [3306]})
    elif change == "governance":
        operator.put("/api/v1/apps/web/governance", json={"limits": {"8081": 3}})
    else:
        operator.delete("/api/v1/apps/web/nodes/10.0.0.1")
    thread.join(15)
    assert time.monotonic() - started < 1.0
    if change == "node removed":
        assert result["answer"].status_code == 404
        return
    assert result["answer"].status_code == 200
    assert result["answer"].json()["version"] > version


def test_long_poll_times_out_with_304(agent: Agent, operator: httpx.Client) -> None:
    version = agent.config().json()["version"]
    # Another node's change does not wake this one.
    operator.put("/api/v1/apps/web/nodes/10.0.0.2/hijack", json={"enabled": True})
    started = time.monotonic()
    answer = agent.config(version=version, wait=1)
    assert answer.status_code == 304
    # It was held for the wait (not answered at once); how long beyond that is the
    # machine's business, not a property of the console.
    assert time.monotonic() - started >= 0.9
    # An unknown (e.g. newer, from a re-created node) version answers at once.
    assert agent.config(version=version + 1000).status_code == 200


def test_long_poll_ends_when_the_client_goes_away(agent: Agent, world: World) -> None:
    """A poll whose agent closed its connection frees its slot at once, not after `wait`."""
    version = agent.config().json()["version"]
    server = world.backend.server
    before = httpx.get(f"{server.url}/api/v1/health").json()["long_polls"]
    with pytest.raises(httpx.TimeoutException):
        # The client gives up long before the console would answer, and closes.
        agent("GET", "config", query={"app": "web", "ip": "10.0.0.1", "version": version,
                                      "wait": 60}, timeout=1)  # fmt: skip
    wait_until(
        lambda: httpx.get(f"{server.url}/api/v1/health").json()["long_polls"] <= before,
        deadline=20,
        what="the abandoned long-poll to end",
    )


def test_both_ways_in_answer_alike(agent: Agent, operator: httpx.Client) -> None:
    """Well-formed requests are answered by the fast path (console/agentfast.py); one with
    anything unusual, here a charset in its content type, by the FastAPI route. Both
    store the same and answer the same."""
    for content_type in ("application/json", "application/json; charset=utf-8"):
        version = f"{len(content_type)}.0"
        answer = agent("POST", "status", body={**STATUS, "version": version},
                       content_type=content_type)  # fmt: skip
        assert answer.status_code == 204, answer.text
        assert operator.get("/api/v1/sidecars").json()[0]["version"] == version
        register = agent("POST", "register", body={"app": "web", "ip": "10.0.0.1",
                         "hostname": "vm-1"}, content_type=content_type)  # fmt: skip
        assert register.status_code == 200
        assert set(register.json()) == {"node_id", "config_version"}
        missing = agent("POST", "status", body={**STATUS, "ip": "10.0.0.9"},
                        content_type=content_type)  # fmt: skip
        assert missing.status_code == 404
        assert ["body", "ip"] in fields(missing)


def test_config_query_validation(agent: Agent) -> None:
    for query, status, loc in [
        ({"app": "web", "ip": "10.0.0.1", "wait": 61}, 422, ["query", "wait"]),
        ({"app": "web", "ip": "10.0.0.1", "wait": -1}, 422, ["query", "wait"]),
        ({"app": "web", "ip": "10.0.0.1", "version": -1}, 422, ["query", "version"]),
        ({"app": "web", "ip": "10.0.0.1", "version": "x"}, 422, ["query", "version"]),
        ({"app": "web"}, 422, ["query", "ip"]),
        ({"app": "w b", "ip": "10.0.0.1"}, 422, ["query", "app"]),
        ({"app": "web", "ip": "300.0.0.1"}, 422, ["query", "ip"]),
        ({"app": "nope", "ip": "10.0.0.1"}, 404, ["query", "app"]),
        ({"app": "web", "ip": "10.0.0.7"}, 404, ["query", "ip"]),
    ]:
        answer = agent("GET", "config", query=query)
        assert answer.status_code == status, (query, answer.text)
        assert loc in fields(answer)


def test_status_feeds_the_sidecar_list(agent: Agent, operator: httpx.Client, world: World) -> None:
    assert operator.get("/api/v1/sidecars").json() == []
    assert agent("POST", "status", body=STATUS).status_code == 204
    sidecars = operator.get("/api/v1/sidecars").json()
    assert len(sidecars) == 1
    row = sidecars[0]
    assert row["app"] == "web"
    assert row["node_ip"] == "10.0.0.1"
    assert row["node_name"] == "vm-1"
    assert row["node_status"] == "Online"
    assert row["sidecar_status"] == "Running"
    assert row["healthy"] is True
    assert row["version"] == "0.1.0"
    assert row["backend"] == "nftables"
    assert row["rule_digest"] == "sha256:abc"
    assert datetime.fromisoformat(row["created_at"]) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert row["sidecar_name"]
    assert operator.get("/api/v1/sidecars", params={"app": "web"}).json() == sidecars
    assert operator.get("/api/v1/sidecars", params={"app": "nope"}).status_code == 404
    assert operator.get("/api/v1/sidecars", params={"app": "n\x00pe"}).status_code == 422

    before = db_snapshot(world.backend.engine)
    for patch, loc in [
        ({"sidecar_status": "running"}, ["body", "sidecar_status"]),
        ({"healthy": "yes"}, ["body", "healthy"]),
        ({"backend": "pf"}, ["body", "backend"]),
        ({"created_at": "yesterday"}, ["body", "created_at"]),
        ({"created_at": "2026-01-02T03:04:05"}, ["body", "created_at"]),
        ({"version": "x" * 65}, ["body", "version"]),
        ({"version": "1\x00"}, ["body", "version"]),
        ({"ipv6": "no"}, ["body", "ipv6"]),
        ({"unknown": 1}, ["body", "unknown"]),
    ]:
        answer = agent("POST", "status", body={**STATUS, **patch})
        assert answer.status_code == 422, answer.text
        assert loc in fields(answer)
    assert agent("POST", "status", body={**STATUS, "ip": "10.0.0.9"}).status_code == 404
    assert db_snapshot(world.backend.engine) == before


def test_sidecar_monitoring(agent: Agent, operator: httpx.Client) -> None:
    agent("POST", "status", body=STATUS)
    agent(
        "POST",
        "status",
        body={**STATUS, "ip": "10.0.0.2", "sidecar_status": "Waiting", "healthy": False,
              "version": "0.2.0"},
    )  # fmt: skip
    view = operator.get("/api/v1/monitoring/sidecars").json()
    now = view["series"][-1]
    assert (now["Running"], now["Waiting"], now["Terminated"], now["Unknown"]) == (1, 1, 0, 0)
    assert now["healthy"] == 1
    assert view["versions"] == [{"version": "0.1.0", "count": 1}, {"version": "0.2.0", "count": 1}]
    assert all(p["t"] <= now["t"] for p in view["series"])
    assert operator.get("/api/v1/monitoring/sidecars", params={"minutes": 1440}).status_code == 200
    for minutes in (0, 1441, "x"):
        bad = operator.get("/api/v1/monitoring/sidecars", params={"minutes": minutes})
        assert bad.status_code == 422
        assert ["query", "minutes"] in fields(bad)


def metrics_body(ip: str, requests: int, errors: int, rt: float, **extra: Any) -> dict[str, Any]:
    return {
        "app": "web",
        "ip": ip,
        "at": datetime.now(UTC).isoformat(),
        "node": {"cpu_percent": 12.5, "mem_percent": 40, "net_in_bytes": 10, "net_out_bytes": 20,
                 "load1": 0.5},
        "ports": [
            {"direction": "inbound", "port": 8080, "requests": requests, "errors": errors,
             "rt_ms_sum": rt, "bytes_in": 1000, "bytes_out": 2000},
            {"direction": "outbound", "port": 3306, "requests": 7, "errors": 7, "rt_ms_sum": 1.0,
             "bytes_in": 1, "bytes_out": 2},
        ],
        **extra,
    }  # fmt: skip


def test_metrics_feed_realtime_monitoring(agent: Agent, operator: httpx.Client) -> None:
    operator.post("/api/v1/apps", json={"name": "idle", "ports": [9000], "nodes": ["10.0.1.1"]})
    for ip in ("10.0.0.1", "10.0.0.2"):
        agent("POST", "status", body={**STATUS, "ip": ip})
    # Two posts of one node within the same buckets add up.
    for ip, requests, errors, rt in [
        ("10.0.0.1", 50, 2, 1000.0),
        ("10.0.0.1", 50, 2, 1000.0),
        ("10.0.0.2", 100, 15, 2000.0),
    ]:
        answer = agent("POST", "metrics", body=metrics_body(ip, requests, errors, rt))
        assert answer.status_code == 204
    view = operator.get("/api/v1/monitoring/realtime", params={"minutes": 5}).json()
    apps = {a["app"]: a for a in view["apps"]}
    web = apps["web"]
    assert web["replicas"] == 2
    assert web["requests_per_min"] == 40.0  # 200 served requests over 5 minutes
    assert web["rt_ms"] == 20.0
    assert web["error_rate"] == 0.095
    assert web["bytes_in"] == 3 * 1001
    assert web["bytes_out"] == 3 * 2002
    assert web["updated_at"] is not None
    assert apps["idle"]["requests_per_min"] == 0
    assert [a["app"] for a in view["top_requests"]] == ["web"]
    assert [a["app"] for a in view["top_rt"]] == ["web"]
    assert [a["app"] for a in view["top_error_rate"]] == ["web"]
    # The day view reads the 1-minute buckets: the same totals.
    day = operator.get("/api/v1/monitoring/realtime", params={"minutes": 1440}).json()
    assert {a["app"]: a for a in day["apps"]}["web"]["rt_ms"] == 20.0


def test_bad_metrics_change_nothing(agent: Agent, world: World) -> None:
    before = db_snapshot(world.backend.engine)
    old = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    good = metrics_body("10.0.0.1", 1, 0, 1.0)
    for body, loc in [
        ({**good, "at": old}, ["body", "at"]),
        ({**good, "at": future}, ["body", "at"]),
        ({**good, "at": "2026-01-01T00:00:00"}, ["body", "at"]),
        ({**good, "node": {"cpu_percent": 101}}, ["body", "node", "cpu_percent"]),
        ({**good, "node": {"net_in_bytes": -1}}, ["body", "node", "net_in_bytes"]),
        ({**good, "ports": [{"direction": "up", "port": 1}]}, ["body", "ports", 0, "direction"]),
        ({**good, "ports": [{"direction": "inbound", "port": 0}]}, ["body", "ports", 0, "port"]),
        (
            {**good, "ports": [{"direction": "inbound", "port": 80, "requests": 1, "errors": 2}]},
            ["body", "ports", 0, "errors"],
        ),
        ({**good, "ports": [{"direction": "inbound", "port": 80, "requests": -1}]},
         ["body", "ports", 0, "requests"]),
    ]:  # fmt: skip
        answer = agent("POST", "metrics", body=body)
        assert answer.status_code == 422, answer.text
        assert loc in fields(answer)
    assert db_snapshot(world.backend.engine) == before


def test_app_monitoring_series_and_node_gauges(agent: Agent, operator: httpx.Client) -> None:
    agent("POST", "register", body={"app": "web", "ip": "10.0.0.1", "hostname": "vm-1"})
    for cpu in (10.0, 30.0):
        body = metrics_body("10.0.0.1", 50, 5, 500.0)
        body["node"] = {"cpu_percent": cpu, "mem_percent": 50, "net_in_bytes": 100,
                        "net_out_bytes": 200, "load1": 1.0}  # fmt: skip
        assert agent("POST", "metrics", body=body).status_code == 204
    view = operator.get("/api/v1/monitoring/apps/web", params={"minutes": 5}).json()
    assert view["app"] == "web"
    assert view["resolution"] == 10
    assert sum(p["requests"] for p in view["series"]) == 100
    assert sum(p["errors"] for p in view["series"]) == 10
    assert all(p["rt_ms"] == 10.0 for p in view["series"])
    nodes = {n["ip"]: n for n in view["nodes"]}
    one = nodes["10.0.0.1"]
    assert (one["hostname"], one["cpu_percent"], one["mem_percent"], one["load1"]) == (
        "vm-1", 20.0, 50.0, 1.0
    )  # fmt: skip
    assert (one["net_in_bytes"], one["net_out_bytes"]) == (200, 400)
    assert (one["requests_per_min"], one["rt_ms"], one["error_rate"]) == (20.0, 10.0, 0.1)
    assert nodes["10.0.0.2"]["requests_per_min"] == 0
    assert nodes["10.0.0.2"]["updated_at"] is None
    assert (
        operator.get("/api/v1/monitoring/apps/web", params={"minutes": 120}).json()["resolution"]
        == 60
    )
    assert operator.get("/api/v1/monitoring/apps/nope").status_code == 404
    assert operator.get("/api/v1/monitoring/apps/web", params={"minutes": 0}).status_code == 422
