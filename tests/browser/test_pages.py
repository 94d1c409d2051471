"""The console's web UI in headless Chromium (R-CO-8): every page, every form, as a person
would use them; what the UI changed is checked through the API, and what agents post shows
up in the lists and charts. Each page is saved to artifacts/screenshots/<page>.png."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from agent.console_client import (
    ConsoleAuthError,
    NodeGauges,
    PortCounters,
    SidecarStatus,
)
from tests.browser.conftest import Console, World, login, screenshot
from tests.console.conftest import PASSWORD

pytestmark = pytest.mark.browser

WEB: dict[str, Any] = {"name": "web", "ports": [8080, 8081], "nodes": ["10.0.0.1", "10.0.0.2"]}


def create_app(world: World, app: dict[str, Any] = WEB) -> None:
    with world.api() as api:
        assert api.post("/api/v1/apps", json=app).status_code == 201


def api_app(world: World, name: str = "web") -> dict[str, Any]:
    with world.api() as api:
        answer = api.get(f"/api/v1/apps/{name}")
        assert answer.status_code == 200, answer.text
        app: dict[str, Any] = answer.json()
        return app


def field_error(page: Page, name: str) -> str:
    error = page.locator(f'[data-error-for="{name}"]')
    expect(error).to_be_visible()
    return error.inner_text()


def test_login_redirects_refuses_and_logs_out(page: Page, console: Console) -> None:
    page.goto(f"{console.url}/apps")
    expect(page).to_have_url(f"{console.url}/login?next=%2Fapps")
    screenshot(page, "login")

    page.fill("#username", console.first_user)
    page.fill("#password", "not the password")
    page.click("button[type=submit]")
    assert "Wrong user name or password" in field_error(page, "_form")

    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{console.url}/apps")
    expect(page.locator(".who .user")).to_have_text(console.first_user)
    # The admin CLI made one instance: login selected it.
    expect(page.locator(".page-head .muted")).to_have_text("acme / prod / shop")

    page.click("button[data-action=logout]")
    page.wait_for_url(f"{console.url}/login")
    page.goto(f"{console.url}/keys")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fkeys$"))

    # After login the page goes back where it was sent from, but never off the console.
    for sent, landed in [
        ("%2Fsidecars%3Fapp%3Dweb", "/sidecars?app=web"),
        ("%2F%09%2Fexample.com", "/apps"),
    ]:
        page.goto(f"{console.url}/login?next={sent}")
        page.fill("#username", console.first_user)
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{console.url}{landed}")
        page.click("button[data-action=logout]")
        page.wait_for_url(f"{console.url}/login")


def test_add_app_with_field_errors_then_delete_guard(page: Page, world: World) -> None:
    login(page, world)
    expect(page.locator("#apps-empty")).to_be_visible()

    page.fill("#app-name", "web")
    page.fill("#app-ports", "8080, 70000")
    page.fill("#app-nodes", "10.0.0.1\n127.0.0.1")
    page.click("form[data-action=create-app] button[type=submit]")
    assert "70000" in field_error(page, "ports")
    assert "127.0.0.1" in field_error(page, "nodes")
    expect(page.locator("#app-ports")).to_have_attribute("aria-invalid", "true")
    screenshot(page, "apps-errors")

    page.fill("#app-ports", "8080, 8081")
    page.fill("#app-nodes", "10.0.0.1\n10.0.0.2")
    page.click("form[data-action=create-app] button[type=submit]")
    page.wait_for_url(f"{world.url}/apps/web")
    expect(page.locator("#flash")).to_have_text("App web added.")
    expect(page.locator("#nodes-table tbody tr")).to_have_count(2)
    app = api_app(world)
    assert app["ports"] == [8080, 8081]
    assert [n["ip"] for n in app["nodes"]] == ["10.0.0.1", "10.0.0.2"]

    page.goto(f"{world.url}/apps")
    row = page.locator('tr[data-app="web"]')
    expect(row).to_contain_text("8080, 8081")
    row.locator("button[data-action=delete-app]").click()
    row.locator("button[data-action=delete-app]").click()  # the second click confirms
    assert "remove its nodes first" in field_error(page, "delete-web")
    screenshot(page, "apps")

    page.goto(f"{world.url}/apps/web")
    for ip in ("10.0.0.1", "10.0.0.2"):
        button = page.locator(f'button[data-action=remove-node][data-ip="{ip}"]')
        button.click()
        button.click()
        expect(page.locator("#flash")).to_have_text(f"Node {ip} removed.")
    page.goto(f"{world.url}/apps")
    page.locator('button[data-action=delete-app][data-app="web"]').click()
    page.locator('button[data-action=delete-app][data-app="web"]').click()
    expect(page.locator("#flash")).to_have_text("App web deleted.")
    expect(page.locator("#apps-empty")).to_be_visible()


def test_node_switch_and_batch(page: Page, world: World) -> None:
    create_app(world, {**WEB, "nodes": ["10.0.0.1", "10.0.0.2", "fd00::3"]})
    login(page, world)
    page.goto(f"{world.url}/apps/web")

    switch = page.locator('input[data-action=switch][data-ip="10.0.0.1"]')
    expect(switch).not_to_be_checked()
    before = {n["ip"]: n["config_version"] for n in api_app(world)["nodes"]}
    page.locator('tr[data-ip="10.0.0.1"] .switch').click()
    expect(page.locator('tr[data-ip="10.0.0.1"] .switch .state')).to_have_text("on")
    nodes = {n["ip"]: n for n in api_app(world)["nodes"]}
    assert nodes["10.0.0.1"]["hijack_enabled"] is True
    assert nodes["10.0.0.1"]["config_version"] > before["10.0.0.1"]
    assert nodes["10.0.0.2"]["hijack_enabled"] is False
    expect(page.locator('tr[data-ip="10.0.0.1"] .version')).to_have_text(
        str(nodes["10.0.0.1"]["config_version"])
    )

    # Batch with nothing selected says so; then all three on, then two off.
    page.click("button[data-action=batch][data-enabled=true]")
    assert "Select one or more nodes" in field_error(page, "batch")
    page.check("input[data-action=select-all]")
    page.click("button[data-action=batch][data-enabled=true]")
    expect(page.locator("#flash")).to_have_text("Hijacking enabled on 3 node(s).")
    assert all(n["hijack_enabled"] for n in api_app(world)["nodes"])
    page.uncheck("input[data-action=select-all]")
    page.check('input.pick[value="10.0.0.2"]')
    page.check('input.pick[value="fd00::3"]')
    page.click("button[data-action=batch][data-enabled=false]")
    expect(page.locator('tr[data-ip="fd00::3"] .switch .state')).to_have_text("off")
    enabled = {n["ip"]: n["hijack_enabled"] for n in api_app(world)["nodes"]}
    assert enabled == {"10.0.0.1": True, "10.0.0.2": False, "fd00::3": False}
    page.reload()
    expect(page.locator('input[data-action=switch][data-ip="10.0.0.1"]')).to_be_checked()
    expect(page.locator('input[data-action=switch][data-ip="10.0.0.2"]')).not_to_be_checked()


def test_parameters_field_errors_then_saved(page: Page, world: World) -> None:
    create_app(world)
    login(page, world)
    page.goto(f"{world.url}/apps/web")

    page.fill("#inbound_exclude_ports", "9090\n80")
    page.fill("#outbound_exclude_cidrs", "10.10.0.0/16\n10.0.0.1/8")
    page.fill("#outbound_exclude_ports", "3306-3300")
    page.click("form[data-action=params] button[type=submit]")
    inbound = field_error(page, "inbound_exclude_ports")
    assert "port 80 " in inbound and "1025" in inbound
    assert "10.0.0.1/8" in field_error(page, "outbound_exclude_cidrs")
    assert "3306-3300" in field_error(page, "outbound_exclude_ports")
    expect(page.locator("#inbound_exclude_ports")).to_have_attribute("aria-invalid", "true")
    screenshot(page, "app-param-errors")
    with world.api() as api:
        assert api.get("/api/v1/apps/web/params").json()["inbound_exclude_ports"] == []

    page.fill("#inbound_exclude_ports", "9090\n8000-8100")
    page.fill("#outbound_exclude_cidrs", "10.10.0.0/16\n192.0.2.7")
    page.fill("#outbound_exclude_ports", "3306, 6379")
    page.click("form[data-action=params] button[type=submit]")
    expect(page.locator("#flash")).to_contain_text("Parameters saved")
    expect(page.locator('[data-error-for="inbound_exclude_ports"]')).to_be_hidden()
    expect(page.locator("#inbound_exclude_ports")).to_have_value("9090\n8000-8100")
    expect(page.locator("#outbound_exclude_cidrs")).to_have_value("10.10.0.0/16\n192.0.2.7/32")
    with world.api() as api:
        assert api.get("/api/v1/apps/web/params").json() == {
            "inbound_exclude_ports": ["9090", "8000-8100"],
            "outbound_exclude_cidrs": ["10.10.0.0/16", "192.0.2.7/32"],
            "outbound_exclude_ports": ["3306", "6379"],
        }


def test_governance_limit_and_change_record(page: Page, world: World) -> None:
    create_app(world)
    login(page, world)
    page.goto(f"{world.url}/apps/web")
    expect(page.locator("#changes-empty")).to_be_visible()

    page.fill("#limit-8080", "2147483648")
    page.fill("#limit-8081", "ten")
    page.click("form[data-action=governance] button[type=submit]")
    assert "2147483647" in field_error(page, "limits.8080")
    assert field_error(page, "limits.8081")
    with world.api() as api:
        assert api.get("/api/v1/apps/web/governance/changes").json() == []

    page.fill("#limit-8080", "100")
    page.fill("#limit-8081", "0")
    page.click("form[data-action=governance] button[type=submit]")
    expect(page.locator("#flash")).to_have_text("Limits saved.")
    rows = page.locator("#changes-table tbody tr")
    expect(rows).to_have_count(1)
    cells = rows.first.locator("td")
    expect(cells.nth(0)).to_have_text(world.user)
    expect(cells.nth(1)).to_contain_text(datetime.now(UTC).strftime("%Y-%m-%d"))
    expect(cells.nth(2)).to_have_text("8080")
    expect(cells.nth(3)).to_have_text("unlimited \u2192 100")
    expect(page.locator("#limit-8080")).to_have_value("100")

    page.fill("#limit-8080", "50")
    page.fill("#limit-8081", "7")
    page.click("form[data-action=governance] button[type=submit]")
    expect(rows).to_have_count(3)
    expect(rows.nth(0).locator("td").nth(3)).to_have_text("100 \u2192 50")
    expect(rows.nth(1).locator("td").nth(3)).to_have_text("unlimited \u2192 7")
    with world.api() as api:
        assert api.get("/api/v1/apps/web/governance").json() == {"limits": {"8080": 50, "8081": 7}}


def test_environment_install_command(page: Page, world: World) -> None:
    create_app(world)
    login(page, world)
    page.goto(f"{world.url}/apps/web")
    command = page.locator("#install-command")
    expect(command).to_have_text(
        f"scripts/sofamesh.sh install -t {world.tenant} -w ws -i inst -n web -a {world.key_id} "
        f"-s '<secret: shown once at key creation>' --console {world.url}"
    )
    expect(page.locator("#environment")).to_contain_text(world.tenant)
    # The page never carries the secret itself.
    assert world.secret not in page.content()
    page.click("button[data-action=copy]")
    expect(page.locator("button[data-action=copy]")).to_have_text(
        re.compile("Copied|Selected: press Ctrl\\+C")
    )
    screenshot(page, "app")


def post_agents(world: World) -> None:
    """Three nodes report as agents would: two Running (one unhealthy on an older version),
    one Waiting; web serves traffic over the last few minutes, api a little."""
    now = datetime.now(UTC)
    started = now - timedelta(hours=1)
    statuses = {
        "10.0.0.1": ("vm-1", SidecarStatus("Running", True, "0.2.0", "nftables", started)),
        "10.0.0.2": ("vm-2", SidecarStatus("Running", False, "0.1.0", "iptables", started)),
        "10.0.0.3": ("vm-3", SidecarStatus("Waiting", False, "0.2.0", "none")),
    }
    with world.agent() as agent:
        for ip, (host, status) in statuses.items():
            app = "api" if ip == "10.0.0.3" else "web"
            agent.register(app, ip, host)
            agent.post_status(app, ip, host, status)
        for i, ago in enumerate((200, 130, 70, 10)):
            for ip in ("10.0.0.1", "10.0.0.2"):
                agent.post_metrics(
                    "web",
                    ip,
                    NodeGauges(cpu_percent=20.0 + i, mem_percent=40.0, load1=0.5),
                    [
                        PortCounters(
                            "inbound", 8080, 100 + 10 * i, 5, 1000.0 * (i + 1), 20_000, 80_000
                        ),
                        PortCounters("outbound", 8080, 30, 0, 90.0, 4_000, 9_000),
                    ],
                    at=now - timedelta(seconds=ago),
                )
        agent.post_metrics(
            "api",
            "10.0.0.3",
            NodeGauges(cpu_percent=5.0),
            [PortCounters("inbound", 9000, 10, 5, 500.0, 1_000, 2_000)],
            at=now - timedelta(seconds=30),
        )


def reload_until(page: Page, condition: str, deadline: float = 30.0) -> None:
    """Reload the page until the script `condition` holds on it."""
    end = time.monotonic() + deadline
    while not page.evaluate(condition):
        assert time.monotonic() < end, f"not within {deadline}s: {condition}"
        page.wait_for_timeout(500)
        page.reload()


def chart_points(page: Page, chart: str, series: str) -> list[float]:
    values = page.locator(f'#{chart} g[data-series="{series}"] circle.pt').evaluate_all(
        "els => els.map(e => Number(e.dataset.v))"
    )
    return [float(v) for v in values]


def test_sidecars_and_monitoring_fill_from_agents(page: Page, world: World) -> None:
    create_app(world, {**WEB, "nodes": ["10.0.0.1", "10.0.0.2"]})
    create_app(world, {"name": "api", "ports": [9000], "nodes": ["10.0.0.3"]})
    login(page, world)

    page.goto(f"{world.url}/sidecars")
    expect(page.locator("#sidecars .empty")).to_be_visible()
    post_agents(world)

    page.goto(f"{world.url}/sidecars")
    rows = page.locator("#sidecars-table tbody tr")
    expect(rows).to_have_count(3)
    first = page.locator('#sidecars-table tr[data-ip="10.0.0.1"] td')
    expected = ["web-sidecar-vm-1", "0.2.0", "web", "vm-1", "10.0.0.1", "Online", "Running"]
    for i, text in enumerate(expected):
        expect(first.nth(i)).to_have_text(text)
    expect(first.nth(7)).to_have_text("healthy")
    expect(page.locator('#sidecars-table tr[data-ip="10.0.0.2"] td').nth(7)).to_have_text(
        "unhealthy"
    )
    expect(page.locator('#sidecars-table tr[data-ip="10.0.0.3"] td').nth(6)).to_have_text("Waiting")
    screenshot(page, "sidecars")
    page.select_option("select[name=app]", "api")
    page.wait_for_url(re.compile(r"/sidecars\?app=api$"))
    expect(rows).to_have_count(1)

    page.goto(f"{world.url}/monitoring/realtime")
    top = page.locator("#chart-top-requests g.bar")
    expect(top).to_have_count(2)
    # web served (100+110+120+130) * 2 = 920 requests in 5 minutes: 184 per minute.
    expect(top.nth(0)).to_have_attribute("data-label", "web")
    expect(top.nth(0)).to_have_attribute("data-v", "184.0")
    expect(page.locator("#chart-top-errors g.bar").nth(0)).to_have_attribute("data-label", "api")
    expect(page.locator("#chart-top-rt g.bar").nth(0)).to_have_attribute("data-label", "api")
    web = page.locator('#traffic-table tr[data-app="web"] td')
    expect(web.nth(1)).to_have_text("2")
    expect(web.nth(4)).to_have_text("184")
    expect(web.nth(6)).to_have_text("4.35 %")  # 40 errors of 920
    screenshot(page, "realtime-monitoring")

    page.goto(f"{world.url}/apps/web")
    requests = chart_points(page, "chart-traffic", "requests")
    assert requests == [200, 220, 240, 260]
    assert len(chart_points(page, "chart-rt", "RT")) == 4
    expect(page.locator("#node-metrics tbody tr")).to_have_count(2)
    expect(page.locator('#nodes-table tr[data-ip="10.0.0.1"]')).to_contain_text("vm-1")
    screenshot(page, "app-traffic")

    page.goto(f"{world.url}/monitoring/sidecars")
    expect(page.locator('[data-stat="Running"] .value')).to_have_text("2")
    expect(page.locator('[data-stat="Waiting"] .value')).to_have_text("1")
    expect(page.locator('[data-stat="healthy"] .value')).to_have_text("1")
    # The last point of each line is now; earlier ones are the 10 s snapshots: wait until
    # one of those has been taken since the agents reported.
    reload_until(
        page,
        """() => [...document.querySelectorAll('#chart-status g[data-series="Running"] .pt')]
            .filter(p => p.dataset.v === '2').length >= 2""",
    )
    assert chart_points(page, "chart-status", "Running")[-1] == 2
    assert chart_points(page, "chart-status", "Waiting")[-1] == 1
    assert chart_points(page, "chart-status", "Terminated")[-1] == 0
    assert chart_points(page, "chart-healthy", "healthy")[-1] == 1
    path = page.locator('#chart-status g[data-series="Running"] path')
    assert re.fullmatch(r"M[\d.]+,[\d.]+( L[\d.]+,[\d.]+)+", path.get_attribute("d") or "")
    versions = page.locator("#versions-table tbody tr")
    expect(versions).to_have_count(2)
    expect(versions.nth(0)).to_have_text(re.compile(r"0\.1\.0\s*1"))
    expect(versions.nth(1)).to_have_text(re.compile(r"0\.2\.0\s*2"))
    expect(page.locator("#chart-versions g.bar")).to_have_count(2)
    screenshot(page, "sidecar-monitoring")


def test_monitoring_pages_refresh_themselves(page: Page, world: World) -> None:
    create_app(world, {"name": "api", "ports": [9000], "nodes": ["10.0.0.3"]})
    login(page, world)
    page.goto(f"{world.url}/monitoring/sidecars?minutes=15")
    expect(page.locator("select[name=minutes]")).to_have_value("15")
    expect(page.locator('[data-stat="Running"] .value')).to_have_text("0")
    with world.agent() as agent:
        agent.register("api", "10.0.0.3", "vm-3")
        agent.post_status("api", "10.0.0.3", "vm-3", SidecarStatus("Running", True, "1", "none"))
    # No reload: the page re-reads itself every 10 s.
    expect(page.locator('[data-stat="Running"] .value')).to_have_text("1", timeout=15_000)


def test_access_keys_secret_shown_once(page: Page, world: World) -> None:
    create_app(world)
    login(page, world)
    page.goto(f"{world.url}/keys")
    expect(page.locator("#keys-table tbody tr")).to_have_count(1)
    page.click("button[data-action=create-key]")
    secret = page.locator("#new-secret")
    expect(secret).to_have_text(re.compile(r"^[A-Za-z0-9_-]{40}$"))
    key_id = page.locator('#new-key [data-field="key_id"]').inner_text()
    expect(page.locator("#keys-table tbody tr")).to_have_count(2)
    screenshot(page, "keys")

    new = World(world.console, world.user, world.tenant, "ws", "inst", key_id, secret.inner_text())
    with new.agent() as agent:
        agent.register("web", "10.0.0.1", "vm-1")

    # A third key is refused (2 per user), with the reason.
    page.click("button[data-action=reload]")
    page.click("button[data-action=create-key]")
    assert "2" in field_error(page, "create-key")
    assert new.secret not in page.content()

    delete = page.locator(f'button[data-action=delete-key][data-key="{key_id}"]')
    delete.click()
    delete.click()
    expect(page.locator("#flash")).to_contain_text(f"Key {key_id} deleted")
    expect(page.locator("#keys-table tbody tr")).to_have_count(1)
    with new.agent() as agent, pytest.raises(ConsoleAuthError):
        agent.register("web", "10.0.0.1", "vm-1")


def test_mutations_need_the_csrf_token(page: Page, world: World) -> None:
    """The page's script sends X-CSRF-Token; the same request from the page without it is
    refused (and the session cookie alone cannot be used cross-site: SameSite=Strict)."""
    create_app(world)
    login(page, world)
    page.goto(f"{world.url}/apps/web")
    status = page.evaluate(
        """async () => (await fetch('/api/v1/apps/web/nodes/10.0.0.1/hijack', {
            method: 'PUT', headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({enabled: true})})).status"""
    )
    assert status == 403
    assert api_app(world)["nodes"][0]["hijack_enabled"] is False
    cookies = {c["name"]: c for c in page.context.cookies(world.url)}
    assert cookies["sofamesh_session"]["httpOnly"] is True
    assert cookies["sofamesh_session"]["sameSite"] == "Strict"


def test_unknown_app_page_and_static_files(page: Page, world: World) -> None:
    login(page, world)
    answer = page.goto(f"{world.url}/apps/nope")
    assert answer is not None and answer.status == 404
    expect(page.locator("h1")).to_have_text("Not found")
    expect(page.locator("nav")).to_be_visible()
    headers = answer.headers
    assert "default-src 'none'" in headers["content-security-policy"]
    css = httpx.get(f"{world.url}/static/sofamesh.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert httpx.get(f"{world.url}/static/..%2Fpages.py").status_code == 404
    # The pages are not part of the API description.
    paths = httpx.get(f"{world.url}/openapi.json").json()["paths"]
    assert all(p.startswith("/api/v1/") for p in paths)
    page.goto(f"{world.url}/monitoring/realtime?minutes=oops")
    expect(page.locator("select[name=minutes]")).to_have_value("5")


def test_agent_text_is_shown_as_text(page: Page, world: World) -> None:
    """What agents send is data, never markup: a version string that looks like HTML is
    shown as written in the sidecar list, the version table and the chart's labels."""
    create_app(world, {"name": "api", "ports": [9000], "nodes": ["10.0.0.3"]})
    version = '<img src=x onerror="document.title=1">'
    with world.agent() as agent:
        agent.register("api", "10.0.0.3", "vm-3")
        agent.post_status(
            "api", "10.0.0.3", "vm-3", SidecarStatus("Running", True, version, "none")
        )
    login(page, world)
    page.goto(f"{world.url}/sidecars")
    expect(page.locator('#sidecars-table tr[data-ip="10.0.0.3"] td').nth(1)).to_have_text(version)
    page.goto(f"{world.url}/monitoring/sidecars")
    expect(page.locator("#versions-table td").first).to_have_text(version)
    expect(page.locator("#chart-versions g.bar")).to_have_attribute("data-label", version)
    assert page.locator("main img").count() == 0
    assert page.title() == "Sidecar monitoring · sofamesh console"
