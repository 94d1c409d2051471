"""Operator sessions and CSRF; agent signatures (unsigned, wrong, stale, replayed, unknown,
deleted, cross-tenant); access keys; the secret in no answer but its creation and no log."""

from __future__ import annotations

import contextlib
import secrets
import time

import httpx
import pytest

from tests.console.agent_http import signed
from tests.console.conftest import PASSWORD, World, db_snapshot, login, make_world
from tests.console.test_api_apps import WEB

pytestmark = pytest.mark.unit

OPERATOR_GETS = [
    "/api/v1/session",
    "/api/v1/instances",
    "/api/v1/keys",
    "/api/v1/apps",
    "/api/v1/apps/web",
    "/api/v1/apps/web/params",
    "/api/v1/apps/web/governance",
    "/api/v1/apps/web/governance/changes",
    "/api/v1/environment?app=web",
    "/api/v1/sidecars",
    "/api/v1/monitoring/sidecars",
    "/api/v1/monitoring/realtime",
    "/api/v1/monitoring/apps/web",
]


def test_operator_endpoints_need_a_session(world: World) -> None:
    for path in OPERATOR_GETS:
        assert httpx.get(world.url + path).status_code == 401, path
    forged = {"sofamesh_session": "forged"}
    assert httpx.get(world.url + "/api/v1/apps", cookies=forged).status_code == 401
    assert httpx.post(world.url + "/api/v1/apps", json=WEB).status_code == 401


def test_login_failures_say_nothing_more(world: World) -> None:
    for user, password in [(world.user, "wrong password"), ("nobody", PASSWORD)]:
        answer = httpx.post(
            world.url + "/api/v1/session", json={"username": user, "password": password}
        )
        assert answer.status_code == 401
        assert answer.json() == {"detail": "wrong user name or password"}
        assert "sofamesh_session" not in answer.cookies
    # Text the database could not even compare (NUL) is refused before it gets there.
    nul = httpx.post(world.url + "/api/v1/session", json={"username": "a\x00b", "password": "x"})
    assert nul.status_code == 422
    bad = httpx.post(world.url + "/api/v1/session", json={"username": world.user, "password": 5})
    assert bad.status_code == 422
    assert "5" not in str(bad.json()["detail"][0].get("input", ""))


def test_session_cookies_and_logout(world: World) -> None:
    client = httpx.Client(base_url=world.url)
    answer = client.post("/api/v1/session", json={"username": world.user, "password": PASSWORD})
    cookies = answer.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("sofamesh_session="))
    csrf = next(c for c in cookies if c.startswith("sofamesh_csrf="))
    assert "HttpOnly" in session
    assert "samesite=strict" in session.lower()
    assert "HttpOnly" not in csrf
    assert client.get("/api/v1/session").json()["user"] == world.user
    client.headers["X-CSRF-Token"] = answer.json()["csrf_token"]
    assert client.delete("/api/v1/session").status_code == 204
    client.cookies.clear()
    # The old cookie no longer works, even if replayed.
    old = session.split(";")[0].split("=", 1)[1]
    assert (
        httpx.get(world.url + "/api/v1/apps", cookies={"sofamesh_session": old}).status_code == 401
    )
    client.close()


def test_mutations_need_the_csrf_header(operator: httpx.Client, world: World) -> None:
    token = operator.headers.pop("X-CSRF-Token")
    before = db_snapshot(world.backend.engine)
    for headers in ({}, {"X-CSRF-Token": "wrong"}):
        answer = operator.post("/api/v1/apps", json=WEB, headers=headers)
        assert answer.status_code == 403
        assert answer.json()["detail"][0]["loc"] == ["header", "X-CSRF-Token"]
    assert db_snapshot(world.backend.engine) == before
    assert (
        operator.post("/api/v1/apps", json=WEB, headers={"X-CSRF-Token": token}).status_code == 201
    )


def test_scope_selection(operator: httpx.Client, world: World) -> None:
    other = make_world(world.backend, keys=0)
    scope = {"tenant": other.tenant, "workspace": other.workspace, "instance_id": other.instance}
    assert operator.put("/api/v1/session/scope", json=scope).json() == scope
    assert operator.get("/api/v1/session").json()["scope"] == scope
    listed = operator.get("/api/v1/instances").json()
    assert scope in listed
    for patch, status, loc in [
        ({"instance_id": "nope"}, 404, ["instance_id"]),
        ({"tenant": "nope"}, 404, ["tenant"]),
        ({"workspace": "nope"}, 404, ["workspace"]),
        ({"tenant": "bad name"}, 422, ["body", "tenant"]),
    ]:
        answer = operator.put("/api/v1/session/scope", json={**scope, **patch})
        assert answer.status_code == status
        assert answer.json()["detail"][0]["loc"] == loc


def test_access_keys_of_the_operator(operator: httpx.Client, world: World) -> None:
    listed = operator.get("/api/v1/keys").json()
    assert [k["key_id"] for k in listed] == [world.key_id]
    assert "secret" not in listed[0]
    created = operator.post("/api/v1/keys")
    assert created.status_code == 201
    key = created.json()
    assert key["secret"]
    assert key["instance_id"] == world.instance
    # At most two keys per user.
    third = operator.post("/api/v1/keys")
    assert third.status_code == 409
    assert key["secret"] not in operator.get("/api/v1/keys").text
    # A deleted key is refused at once.
    body = {"app": "web", "ip": "10.0.0.1", "hostname": "h"}
    answer = signed(
        world.url, key["key_id"], key["secret"], "POST", "/api/v1/agent/register", body=body
    )
    assert answer.status_code == 404  # authenticated; the app does not exist
    assert operator.delete(f"/api/v1/keys/{key['key_id']}").status_code == 204
    assert operator.delete(f"/api/v1/keys/{key['key_id']}").status_code == 404
    assert operator.delete("/api/v1/keys/not-a-key").status_code == 422
    answer = signed(
        world.url, key["key_id"], key["secret"], "POST", "/api/v1/agent/register", body=body
    )
    assert answer.status_code == 401
    # Replaced: a new key can be created again.
    assert operator.post("/api/v1/keys").status_code == 201


@pytest.fixture
def app_world(operator: httpx.Client, world: World) -> World:
    assert operator.post("/api/v1/apps", json=WEB).status_code == 201
    return world


REGISTER = {"app": "web", "ip": "10.0.0.1", "hostname": "vm-1"}
PATH = "/api/v1/agent/register"


def test_signed_request_is_accepted(app_world: World) -> None:
    w = app_world
    assert signed(w.url, w.key_id, w.secret, "POST", PATH, body=REGISTER).status_code == 200


def test_unsigned_and_wrongly_signed_are_rejected(app_world: World) -> None:
    w = app_world
    before = db_snapshot(w.backend.engine)
    assert httpx.post(w.url + PATH, json=REGISTER).status_code == 401
    cases = [
        signed(w.url, w.key_id, "not-the-secret", "POST", PATH, body=REGISTER),
        signed(w.url, "SMAK" + "0" * 20, w.secret, "POST", PATH, body=REGISTER),
        signed(w.url, "garbage", w.secret, "POST", PATH, body=REGISTER),
        signed(
            w.url, w.key_id, w.secret, "POST", PATH, body=REGISTER, sign_path="/api/v1/agent/status"
        ),
    ]
    for answer in cases:
        assert answer.status_code == 401, answer.text
    assert db_snapshot(w.backend.engine) == before


def test_tampered_body_or_query_is_rejected(app_world: World) -> None:
    w = app_world
    nonce = secrets.token_hex(16)
    ts = int(time.time())
    good = signed(w.url, w.key_id, w.secret, "GET", "/api/v1/agent/config",
                  query={"app": "web", "ip": "10.0.0.1"}, timestamp=ts, nonce=nonce)  # fmt: skip
    assert good.status_code == 200
    headers = {k: v for k, v in good.request.headers.items() if k.lower().startswith("x-sofamesh")}
    headers["X-Sofamesh-Nonce"] = secrets.token_hex(16)  # fresh nonce, old signature
    tampered = httpx.get(w.url + "/api/v1/agent/config?app=web&ip=10.0.0.2", headers=headers)
    assert tampered.status_code == 401
    body = httpx.post(w.url + PATH, json={**REGISTER, "hostname": "evil"}, headers=headers)
    assert body.status_code == 401


def test_stale_timestamps_are_rejected(app_world: World) -> None:
    w = app_world
    # Beyond 300 s by a margin: the server's clock moves on while the request travels, and
    # with whole-second timestamps a +301 taken late in a second was fresh by arrival.
    for offset in (-305, 305, -3600):
        answer = signed(w.url, w.key_id, w.secret, "POST", PATH, body=REGISTER,
                        timestamp=int(time.time()) + offset)  # fmt: skip
        assert answer.status_code == 401
        assert answer.json()["detail"] == "stale timestamp"
    for offset in (-250, 250):
        answer = signed(w.url, w.key_id, w.secret, "POST", PATH, body=REGISTER,
                        timestamp=int(time.time()) + offset)  # fmt: skip
        assert answer.status_code == 200


def test_replayed_nonce_is_rejected(app_world: World) -> None:
    w = app_world
    nonce = secrets.token_hex(16)
    ts = int(time.time())
    first = signed(
        w.url, w.key_id, w.secret, "POST", PATH, body=REGISTER, nonce=nonce, timestamp=ts
    )
    assert first.status_code == 200
    again = httpx.post(w.url + PATH, content=first.request.content, headers=first.request.headers)
    assert again.status_code == 401
    assert again.json()["detail"] == "replayed nonce"
    # The same nonce re-signed with another timestamp is a replay too.
    other = signed(
        w.url, w.key_id, w.secret, "POST", PATH, body=REGISTER, nonce=nonce, timestamp=ts - 1
    )
    assert other.status_code == 401


def test_malformed_signature_headers(app_world: World) -> None:
    w = app_world
    base = signed(w.url, w.key_id, w.secret, "POST", PATH, body=REGISTER).request.headers
    for name, value in [
        ("X-Sofamesh-Nonce", "short"),
        ("X-Sofamesh-Nonce", "zz" * 16),
        ("X-Sofamesh-Timestamp", "soon"),
        ("X-Sofamesh-Signature", "ABC"),
    ]:
        headers = {k: v for k, v in base.items() if k.lower().startswith("x-sofamesh")}
        headers[name] = value
        answer = httpx.post(w.url + PATH, json=REGISTER, headers=headers)
        assert answer.status_code == 401
        assert name in answer.json()["detail"]


def test_a_key_sees_only_its_own_instance(app_world: World, operator: httpx.Client) -> None:
    other = make_world(app_world.backend)
    with contextlib.closing(login(other)) as theirs:
        assert theirs.post("/api/v1/apps", json={**WEB, "nodes": ["10.0.0.1"]}).status_code == 201
        theirs.put("/api/v1/apps/web/params", json={"outbound_exclude_ports": [4444]})
    mine = app_world
    # Same app name and IP exist in both instances: each key gets its own.
    for world, excluded in ((mine, []), (other, ["4444"])):
        answer = signed(world.url, world.key_id, world.secret, "GET", "/api/v1/agent/config",
                        query={"app": "web", "ip": "10.0.0.1"})  # fmt: skip
        assert answer.json()["hijack"]["outbound"]["exclude_ports"] == excluded
    # Nodes of another instance are simply not there for this key.
    answer = signed(mine.url, mine.key_id, mine.secret, "POST", PATH,
                    body={**REGISTER, "ip": "10.0.0.2"})  # fmt: skip
    assert answer.status_code == 200
    answer = signed(other.url, other.key_id, other.secret, "POST", PATH,
                    body={**REGISTER, "ip": "10.0.0.2"})  # fmt: skip
    assert answer.status_code == 404
    assert operator.get("/api/v1/apps").json()[0]["nodes"][1]["hostname"] == "vm-1"


def test_secrets_appear_in_no_log(app_world: World, operator: httpx.Client) -> None:
    """Runs after the other security tests in this file, on the same server log."""
    w = app_world
    created = operator.post("/api/v1/keys").json()
    signed(w.url, w.key_id, w.secret, "POST", PATH, body=REGISTER)
    signed(w.url, created["key_id"], created["secret"], "POST", PATH, body=REGISTER)
    signed(w.url, w.key_id, "wrong", "POST", PATH, body=REGISTER)
    signed(w.url, w.secret, w.secret, "POST", PATH, body=REGISTER)  # secret sent as key id
    httpx.post(w.url + "/api/v1/session", json={"username": w.user, "password": "a-typo-password"})
    # The secret was never in an answer other than the creation one.
    for path in OPERATOR_GETS:
        assert created["secret"] not in operator.get(path).text
        assert w.secret not in operator.get(path).text
    # The access line of a last, marked request shows the log has caught up.
    marker = secrets.token_hex(8)
    httpx.get(f"{w.url}/api/v1/health?marker={marker}")
    log = w.backend.server.wait_for_log(marker)
    for secret in (w.secret, created["secret"], PASSWORD, "a-typo-password"):
        assert secret not in log
