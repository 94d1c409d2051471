"""Interception parameters, governance limits with their records, environment info."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.console.conftest import World, db_snapshot
from tests.console.test_api_apps import WEB, fields

pytestmark = pytest.mark.unit

EMPTY = {"inbound_exclude_ports": [], "outbound_exclude_cidrs": [], "outbound_exclude_ports": []}


@pytest.fixture
def web(operator: httpx.Client) -> httpx.Client:
    assert operator.post("/api/v1/apps", json=WEB).status_code == 201
    return operator


def test_params_round_trip(web: httpx.Client) -> None:
    assert web.get("/api/v1/apps/web/params").json() == EMPTY
    body = {
        "inbound_exclude_ports": ["8000-8100", 9090, "9100:9200", "65535"],
        "outbound_exclude_cidrs": ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"],
        "outbound_exclude_ports": [3306, "1025-2000"],
    }
    answer = web.put("/api/v1/apps/web/params", json=body)
    assert answer.status_code == 200, answer.text
    stored = {
        "inbound_exclude_ports": ["8000-8100", "9090", "9100-9200", "65535"],
        "outbound_exclude_cidrs": ["10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32"],
        "outbound_exclude_ports": ["3306", "1025-2000"],
    }
    assert answer.json() == stored
    assert web.get("/api/v1/apps/web/params").json() == stored
    # Lists left out are emptied (PUT replaces).
    assert web.put("/api/v1/apps/web/params", json={}).json() == EMPTY


BAD_PARAMS = [
    ({"inbound_exclude_ports": [80]}, ["body", "inbound_exclude_ports", 0]),
    ({"inbound_exclude_ports": [1024]}, ["body", "inbound_exclude_ports", 0]),
    ({"inbound_exclude_ports": [65536]}, ["body", "inbound_exclude_ports", 0]),
    ({"inbound_exclude_ports": ["9000-8000"]}, ["body", "inbound_exclude_ports", 0]),
    ({"inbound_exclude_ports": ["1000-2000"]}, ["body", "inbound_exclude_ports", 0]),
    ({"inbound_exclude_ports": ["80a"]}, ["body", "inbound_exclude_ports", 0]),
    ({"inbound_exclude_ports": ["1-2-3"]}, ["body", "inbound_exclude_ports", 0]),
    ({"inbound_exclude_ports": [True]}, ["body", "inbound_exclude_ports", 0]),
    ({"inbound_exclude_ports": [9000, 9000]}, ["body", "inbound_exclude_ports"]),
    ({"inbound_exclude_ports": "9000"}, ["body", "inbound_exclude_ports"]),
    ({"outbound_exclude_ports": [22]}, ["body", "outbound_exclude_ports", 0]),
    ({"outbound_exclude_ports": [2000, "70000"]}, ["body", "outbound_exclude_ports", 1]),
    ({"outbound_exclude_cidrs": ["10.0.0.1/8"]}, ["body", "outbound_exclude_cidrs", 0]),
    ({"outbound_exclude_cidrs": ["10.0.0.0/33"]}, ["body", "outbound_exclude_cidrs", 0]),
    ({"outbound_exclude_cidrs": ["2001:db8::1/32"]}, ["body", "outbound_exclude_cidrs", 0]),
    ({"outbound_exclude_cidrs": ["example.com"]}, ["body", "outbound_exclude_cidrs", 0]),
    ({"outbound_exclude_cidrs": [10]}, ["body", "outbound_exclude_cidrs", 0]),
    ({"outbound_exclude_cidrs": ["10.0.0.0/8", "10.0.0.0/8"]}, ["body", "outbound_exclude_cidrs"]),
    ({"inbound": []}, ["body", "inbound"]),
]


@pytest.mark.parametrize(("body", "loc"), BAD_PARAMS, ids=[repr(b[0]) for b in BAD_PARAMS])
def test_bad_params_change_nothing(
    web: httpx.Client, world: World, body: dict[str, Any], loc: list[Any]
) -> None:
    web.put("/api/v1/apps/web/params", json={"inbound_exclude_ports": [9000]})
    before = db_snapshot(world.backend.engine)
    answer = web.put("/api/v1/apps/web/params", json=body)
    assert answer.status_code == 422, answer.text
    assert loc in fields(answer)
    assert db_snapshot(world.backend.engine) == before


def test_params_of_unknown_app(web: httpx.Client) -> None:
    assert web.get("/api/v1/apps/nope/params").status_code == 404
    answer = web.put("/api/v1/apps/nope/params", json=EMPTY)
    assert answer.status_code == 404
    assert fields(answer) == [["path", "name"]]


def test_ten_thousand_cidrs_are_accepted(web: httpx.Client) -> None:
    cidrs = [f"10.{i // 256}.{i % 256}.0/24" for i in range(10_000)]
    answer = web.put("/api/v1/apps/web/params", json={"outbound_exclude_cidrs": cidrs})
    assert answer.status_code == 200
    assert len(answer.json()["outbound_exclude_cidrs"]) == 10_000
    too_many = web.put(
        "/api/v1/apps/web/params", json={"outbound_exclude_cidrs": [*cidrs, "11.0.0.0/8"]}
    )
    assert too_many.status_code == 422


def test_governance_limits_and_records(web: httpx.Client, world: World) -> None:
    assert web.get("/api/v1/apps/web/governance").json() == {"limits": {"8080": 0, "8081": 0}}
    assert web.get("/api/v1/apps/web/governance/changes").json() == []
    start = datetime.now(UTC) - timedelta(seconds=5)

    first = web.put("/api/v1/apps/web/governance", json={"limits": {"8080": 100}})
    assert first.status_code == 200
    assert first.json() == {"limits": {"8080": 100, "8081": 0}}
    second = web.put(
        "/api/v1/apps/web/governance", json={"limits": {"8080": 2147483647, "8081": 5}}
    )
    assert second.json() == {"limits": {"8080": 2147483647, "8081": 5}}
    # Same values: no record.
    web.put("/api/v1/apps/web/governance", json={"limits": {"8080": 2147483647, "8081": 5}})
    # Left out: back to 0 (unlimited), recorded.
    web.put("/api/v1/apps/web/governance", json={"limits": {"8080": 2147483647}})

    changes = web.get("/api/v1/apps/web/governance/changes").json()
    simple = [(c["port"], c["old"], c["new"], c["who"]) for c in changes]
    assert simple == [
        (8081, 5, 0, world.user),
        (8080, 100, 2147483647, world.user),
        (8081, 0, 5, world.user),
        (8080, 0, 100, world.user),
    ]
    for change in changes:
        at = datetime.fromisoformat(change["at"])
        assert start <= at <= datetime.now(UTC) + timedelta(seconds=5)


BAD_GOVERNANCE = [
    ({"limits": {"8080": -1}}, ["body", "limits", "8080"]),
    ({"limits": {"8080": 2147483648}}, ["body", "limits", "8080"]),
    ({"limits": {"8080": "5"}}, ["body", "limits", "8080"]),
    ({"limits": {"8080": 1.5}}, ["body", "limits", "8080"]),
    ({"limits": {"9999": 5}}, ["body", "limits", "9999"]),
    ({"limits": {"80a": 5}}, ["body", "limits", "80a", "[key]"]),
    ({"limits": {"8080": 5, "08080": 6}}, ["body", "limits", "08080"]),
    ({"limits": [8080]}, ["body", "limits"]),
    ({}, ["body", "limits"]),
]


@pytest.mark.parametrize(("body", "loc"), BAD_GOVERNANCE, ids=[repr(b[0]) for b in BAD_GOVERNANCE])
def test_bad_governance_changes_nothing(
    web: httpx.Client, world: World, body: dict[str, Any], loc: list[Any]
) -> None:
    web.put("/api/v1/apps/web/governance", json={"limits": {"8080": 7}})
    before = db_snapshot(world.backend.engine)
    answer = web.put("/api/v1/apps/web/governance", json=body)
    assert answer.status_code == 422, answer.text
    assert loc in fields(answer)
    assert db_snapshot(world.backend.engine) == before


def test_environment_info(web: httpx.Client, world: World) -> None:
    answer = web.get("/api/v1/environment", params={"app": "web", "ip": "10.0.0.1"})
    assert answer.status_code == 200, answer.text
    env = answer.json()
    assert (env["tenant"], env["workspace"], env["instance_id"]) == (
        world.tenant,
        world.workspace,
        world.instance,
    )
    assert env["access_key_id"] == world.key_id
    argv = shlex.split(env["install_command"])
    assert argv[:2] == ["scripts/sofamesh.sh", "install"]
    options = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert options["-t"] == world.tenant
    assert options["-w"] == world.workspace
    assert options["-i"] == world.instance
    assert options["-n"] == "web"
    assert options["-a"] == world.key_id
    assert options["--console"] == world.url
    assert world.secret not in answer.text
    assert web.get("/api/v1/environment", params={"app": "web"}).json()["ip"] is None

    for params, status, loc in [
        ({"app": "nope"}, 404, ["query", "app"]),
        ({"app": "bad name"}, 422, ["query", "app"]),
        ({"app": "web", "ip": "10.9.9.9"}, 404, ["query", "ip"]),
        ({"app": "web", "ip": "x"}, 422, ["query", "ip"]),
        ({}, 422, ["query", "app"]),
    ]:
        bad = web.get("/api/v1/environment", params=params)
        assert bad.status_code == status
        assert loc in fields(bad)
