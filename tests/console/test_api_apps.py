"""Apps, nodes and hijack switches through the HTTP API (R-CO-2, R-CO-4, R-SF-2)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.console.conftest import World, db_snapshot

pytestmark = pytest.mark.unit

WEB = {"name": "web", "ports": [8080, 8081], "nodes": ["10.0.0.1", "10.0.0.2"]}


def fields(answer: httpx.Response) -> list[list[Any]]:
    return [d["loc"] for d in answer.json()["detail"]]


def test_create_get_list_delete(operator: httpx.Client) -> None:
    created = operator.post("/api/v1/apps", json=WEB)
    assert created.status_code == 201, created.text
    app = created.json()
    assert app["name"] == "web"
    assert app["ports"] == [8080, 8081]
    assert [n["ip"] for n in app["nodes"]] == ["10.0.0.1", "10.0.0.2"]
    assert not any(n["hijack_enabled"] or n["registered"] for n in app["nodes"])
    assert operator.get("/api/v1/apps/web").json() == app
    assert [a["name"] for a in operator.get("/api/v1/apps").json()] == ["web"]

    assert operator.post("/api/v1/apps", json=WEB).status_code == 409
    for ip in WEB["nodes"]:
        assert operator.delete(f"/api/v1/apps/web/nodes/{ip}").status_code == 204
    assert operator.delete("/api/v1/apps/web").status_code == 204
    assert operator.get("/api/v1/apps/web").status_code == 404
    assert operator.get("/api/v1/apps").json() == []


def test_delete_guard_while_nodes_exist(operator: httpx.Client, world: World) -> None:
    operator.post("/api/v1/apps", json=WEB)
    before = db_snapshot(world.backend.engine)
    answer = operator.delete("/api/v1/apps/web")
    assert answer.status_code == 409
    assert "remove its nodes first" in answer.json()["detail"][0]["msg"]
    assert db_snapshot(world.backend.engine) == before
    operator.delete("/api/v1/apps/web/nodes/10.0.0.1")
    assert operator.delete("/api/v1/apps/web").status_code == 409
    operator.delete("/api/v1/apps/web/nodes/10.0.0.2")
    assert operator.delete("/api/v1/apps/web").status_code == 204


BAD_APPS = [
    ({**WEB, "name": "we b"}, ["body", "name"]),
    ({**WEB, "name": "a_b"}, ["body", "name"]),
    ({**WEB, "name": ""}, ["body", "name"]),
    ({**WEB, "name": "x" * 64}, ["body", "name"]),
    ({**WEB, "name": 7}, ["body", "name"]),
    ({**WEB, "ports": []}, ["body", "ports"]),
    ({**WEB, "ports": [0]}, ["body", "ports", 0]),
    ({**WEB, "ports": [65536]}, ["body", "ports", 0]),
    ({**WEB, "ports": ["8080"]}, ["body", "ports", 0]),
    ({**WEB, "ports": [True]}, ["body", "ports", 0]),
    ({**WEB, "ports": [8080, 8080]}, ["body", "ports"]),
    ({**WEB, "nodes": []}, ["body", "nodes"]),
    ({**WEB, "nodes": ["10.0.0.300"]}, ["body", "nodes", 0]),
    ({**WEB, "nodes": ["10.0.0.1", "host.example"]}, ["body", "nodes", 1]),
    ({**WEB, "nodes": ["127.0.0.1"]}, ["body", "nodes", 0]),
    ({**WEB, "nodes": ["0.0.0.0"]}, ["body", "nodes", 0]),
    ({**WEB, "nodes": ["224.0.0.1"]}, ["body", "nodes", 0]),
    ({**WEB, "nodes": ["10.0.0.1", "10.0.0.1"]}, ["body", "nodes"]),
    ({**WEB, "extra": 1}, ["body", "extra"]),
    ({"ports": [1], "nodes": ["10.0.0.1"]}, ["body", "name"]),
]


@pytest.mark.parametrize(("body", "loc"), BAD_APPS, ids=[repr(b[1]) for b in BAD_APPS])
def test_bad_app_is_rejected_naming_the_field(
    operator: httpx.Client, world: World, body: dict[str, Any], loc: list[Any]
) -> None:
    before = db_snapshot(world.backend.engine)
    answer = operator.post("/api/v1/apps", json=body)
    assert answer.status_code == 422, answer.text
    assert loc in fields(answer)
    assert db_snapshot(world.backend.engine) == before


def test_ipv6_nodes_are_canonical(operator: httpx.Client) -> None:
    app = operator.post("/api/v1/apps", json={**WEB, "nodes": ["2001:DB8::0:1"]}).json()
    assert app["nodes"][0]["ip"] == "2001:db8::1"
    assert operator.put("/api/v1/apps/web/nodes/2001:db8::1/hijack", json={"enabled": True}).json()[
        "hijack_enabled"
    ]


def test_add_and_remove_nodes(operator: httpx.Client, world: World) -> None:
    operator.post("/api/v1/apps", json=WEB)
    added = operator.post("/api/v1/apps/web/nodes", json={"ip": "10.0.0.3"})
    assert added.status_code == 201
    assert added.json()["ip"] == "10.0.0.3"
    before = db_snapshot(world.backend.engine)
    for body, status, loc in [
        ({"ip": "10.0.0.3"}, 409, ["body", "ip"]),
        ({"ip": "nope"}, 422, ["body", "ip"]),
        ({"ip": 10}, 422, ["body", "ip"]),
        ({}, 422, ["body", "ip"]),
    ]:
        answer = operator.post("/api/v1/apps/web/nodes", json=body)
        assert answer.status_code == status
        assert loc in fields(answer)
    assert operator.post("/api/v1/apps/nope/nodes", json={"ip": "10.0.0.9"}).status_code == 404
    assert operator.delete("/api/v1/apps/web/nodes/10.0.0.9").status_code == 404
    assert operator.delete("/api/v1/apps/web/nodes/bad-ip").status_code == 422
    assert db_snapshot(world.backend.engine) == before
    assert operator.delete("/api/v1/apps/web/nodes/10.0.0.3").status_code == 204
    ips = [n["ip"] for n in operator.get("/api/v1/apps/web").json()["nodes"]]
    assert ips == ["10.0.0.1", "10.0.0.2"]


def test_a_node_ip_belongs_to_one_app(operator: httpx.Client, world: World) -> None:
    operator.post("/api/v1/apps", json=WEB)
    before = db_snapshot(world.backend.engine)
    other = {"name": "api", "ports": [9000], "nodes": ["10.0.0.9", "10.0.0.2"]}
    answer = operator.post("/api/v1/apps", json=other)
    assert answer.status_code == 409
    assert fields(answer) == [["body", "nodes", 1]]
    assert "web" in answer.json()["detail"][0]["msg"]
    assert db_snapshot(world.backend.engine) == before


def test_switch_and_batch(operator: httpx.Client, world: World) -> None:
    app = operator.post("/api/v1/apps", json={**WEB, "nodes": ["10.0.0.1", "10.0.0.2", "10.0.0.3"]})
    versions = {n["ip"]: n["config_version"] for n in app.json()["nodes"]}
    on = operator.put("/api/v1/apps/web/nodes/10.0.0.1/hijack", json={"enabled": True})
    assert on.status_code == 200
    assert on.json()["hijack_enabled"] is True
    assert on.json()["config_version"] > versions["10.0.0.1"]
    # The same value again changes nothing, not even the version.
    again = operator.put("/api/v1/apps/web/nodes/10.0.0.1/hijack", json={"enabled": True})
    assert again.json()["config_version"] == on.json()["config_version"]

    batch = operator.post(
        "/api/v1/apps/web/hijack:batch", json={"ips": ["10.0.0.2", "10.0.0.3"], "enabled": True}
    )
    assert batch.status_code == 200
    assert [n["hijack_enabled"] for n in batch.json()] == [True, True]
    nodes = operator.get("/api/v1/apps/web").json()["nodes"]
    assert all(n["hijack_enabled"] for n in nodes)

    before = db_snapshot(world.backend.engine)
    for path, body, status, loc in [
        ("nodes/10.0.0.1/hijack", {"enabled": "yes"}, 422, ["body", "enabled"]),
        ("nodes/10.0.0.1/hijack", {"enabled": 1}, 422, ["body", "enabled"]),
        ("nodes/10.0.0.1/hijack", {}, 422, ["body", "enabled"]),
        ("nodes/10.9.9.9/hijack", {"enabled": False}, 404, ["path", "ip"]),
    ]:
        answer = operator.put(f"/api/v1/apps/web/{path}", json=body)
        assert answer.status_code == status
        assert loc in fields(answer)
    # One unknown IP in a batch: nothing is switched.
    for body, status, loc in [
        ({"ips": ["10.0.0.1", "10.9.9.9"], "enabled": False}, 404, ["body", "ips", 1]),
        ({"ips": [], "enabled": False}, 422, ["body", "ips"]),
        ({"ips": ["10.0.0.1", "10.0.0.1"], "enabled": False}, 422, ["body", "ips"]),
        ({"ips": ["x"], "enabled": False}, 422, ["body", "ips", 0]),
        ({"ips": ["10.0.0.1"]}, 422, ["body", "enabled"]),
    ]:
        answer = operator.post("/api/v1/apps/web/hijack:batch", json=body)
        assert answer.status_code == status, answer.text
        assert loc in fields(answer)
    assert (
        operator.put("/api/v1/apps/nope/nodes/10.0.0.1/hijack", json={"enabled": True}).status_code
        == 404
    )
    assert db_snapshot(world.backend.engine) == before


def test_malformed_json_is_rejected(operator: httpx.Client, world: World) -> None:
    before = db_snapshot(world.backend.engine)
    answer = operator.post(
        "/api/v1/apps", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 422
    assert db_snapshot(world.backend.engine) == before
