"""Headless Chromium (Debian's) driven by Playwright against a real console process.

One console on SQLite and one browser (a persistent context on a fresh user-data dir) per
session; each test gets its own operator, tenant/workspace/instance and access key, a new
page with no cookies, and checks that the page fetched nothing from elsewhere and logged no
error (a Content-Security-Policy violation is one).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import BrowserContext, ConsoleMessage, Page, Playwright, sync_playwright
from sqlalchemy import Engine

from agent.console_client import ConsoleClient, Credentials
from console import admin
from console.db import make_engine, sessions
from tests.console.conftest import PASSWORD, REPO, ConsoleProcess

CHROMIUM = Path(os.environ.get("SOFAMESH_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
TIMEOUT_MS = 10_000
EXPECTED_ERROR = "Failed to load resource: the server responded with a status of 4"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if CHROMIUM.exists():
        return
    skip = pytest.mark.skip(
        reason=f"needs Debian's chromium (apt-get install chromium): no {CHROMIUM}"
    )
    for item in items:
        # Only the tests that drive the browser; the chart geometry tests run anywhere.
        if item.get_closest_marker("browser") and "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@dataclass
class Console:
    server: ConsoleProcess
    engine: Engine
    # The operator made with the admin CLI, as a first install would.
    first_user: str

    @property
    def url(self) -> str:
        return self.server.url


def _admin(db_url: str, *args: str, stdin: str = "") -> str:
    done = subprocess.run(
        [sys.executable, "-m", "agent", "console", "admin", *args, "--db", db_url],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="session")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    base = tmp_path_factory.mktemp("console-ui")
    url = f"sqlite:///{base / 'console.db'}"
    _admin(url, "create-user", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    _admin(url, "create-tenant", "acme")
    _admin(url, "create-workspace", "acme", "prod")
    _admin(url, "create-instance", "acme", "prod", "shop")
    server = ConsoleProcess(url, base / "console.log").start()
    engine = make_engine(url)
    try:
        yield Console(server, engine, "admin")
    finally:
        server.stop()
        engine.dispose()


@dataclass(frozen=True)
class World:
    """One test's own operator, scope and access key."""

    console: Console
    user: str
    tenant: str
    workspace: str
    instance: str
    key_id: str
    secret: str = field(repr=False)

    @property
    def url(self) -> str:
        return self.console.url

    def agent(self) -> ConsoleClient:
        return ConsoleClient(self.url, Credentials(self.key_id, self.secret))

    @contextmanager
    def api(self) -> Iterator[httpx.Client]:
        """A logged-in operator API client of this world (its own session)."""
        with httpx.Client(base_url=self.url, timeout=10) as client:
            login = {"username": self.user, "password": PASSWORD}
            answer = client.post("/api/v1/session", json=login)
            assert answer.status_code == 200, answer.text
            client.headers["X-CSRF-Token"] = answer.json()["csrf_token"]
            scope = {
                "tenant": self.tenant,
                "workspace": self.workspace,
                "instance_id": self.instance,
            }
            assert client.put("/api/v1/session/scope", json=scope).status_code == 200
            yield client


@pytest.fixture
def world(console: Console) -> World:
    tag = secrets.token_hex(4)
    with sessions(console.engine)() as db:
        user = admin.create_user(db, f"op-{tag}", PASSWORD)
        admin.create_tenant(db, f"t-{tag}")
        admin.create_workspace(db, f"t-{tag}", "ws")
        instance = admin.create_instance(db, f"t-{tag}", "ws", "inst")
        key = admin.create_key(db, user, instance)
        db.commit()
    return World(console, f"op-{tag}", f"t-{tag}", "ws", "inst", key.key_id, key.secret)


# Module scope, not session: Playwright's sync API keeps an event loop running on the main
# thread while it lives, and tests that run after it in the same process (another file on
# the same pytest-xdist worker) could not start one of their own.
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(
    playwright: Playwright, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrowserContext]:
    profile = tmp_path_factory.mktemp("chromium-profile")
    context = playwright.chromium.launch_persistent_context(
        profile,
        executable_path=str(CHROMIUM),
        headless=False,  # --headless=new is in the arguments
        args=CHROMIUM_ARGS,
        viewport={"width": 1366, "height": 900},
        locale="en-US",
        timezone_id="UTC",
    )
    try:
        yield context
    finally:
        context.close()


@dataclass
class Watch:
    """What a page asked for and complained about."""

    origin: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        # Chromium logs every 4xx answer to fetch; the tests cause those on purpose.
        if message.type == "error" and not message.text.startswith(EXPECTED_ERROR):
            self.errors.append(message.text)

    def foreign(self) -> list[str]:
        return [
            u for u in self.requests if not u.startswith((self.origin + "/", "data:", "about:"))
        ]


@pytest.fixture
def page(browser: BrowserContext, console: Console) -> Iterator[Page]:
    browser.clear_cookies()
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    watch = Watch(console.url)
    page.on("request", lambda r: watch.requests.append(r.url))
    page.on("console", watch.on_console)
    page.on("pageerror", lambda exc: watch.errors.append(f"uncaught: {exc}"))
    try:
        yield page
    finally:
        page.close()
    assert watch.foreign() == [], "the UI fetched something from elsewhere"
    assert watch.errors == [], "the page logged errors"


def login(page: Page, world: World) -> None:
    page.goto(f"{world.url}/login")
    page.fill("#username", world.user)
    page.fill("#password", PASSWORD)
    page.click("form[data-action=login] button[type=submit]")
    page.wait_for_url(f"{world.url}/apps")
    # Login selects the first instance; act in this world's own.
    page.select_option(
        "select[data-action=scope]", label=f"{world.tenant} / {world.workspace} / {world.instance}"
    )
    page.wait_for_function(
        "t => document.querySelector('.page-head .muted')?.textContent.startsWith(t)",
        arg=f"{world.tenant} /",
    )


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    return path
