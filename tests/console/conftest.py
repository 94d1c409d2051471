"""Real console processes on SQLite and on a throw-away PostgreSQL cluster.

The API tests talk HTTP to `python -m agent console serve` on a free loopback port. Each
backend's server starts once per session; each test gets its own tenant/workspace/instance,
user and key (made in-process with console.admin), so tests never see each other's data.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, MetaData, select

from console import admin
from console.db import make_engine, migrate, sessions
from netlab import LabTimeout, wait_until

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery"  # noqa: S105  (a test operator's password)
VOLATILE_TABLES = {"nonces", "sessions", "sidecar_snapshots"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PgCluster:
    socket_dir: str
    user: str = "sofamesh"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@/{database}?host={self.socket_dir}"

    def create_database(self, name: str) -> str:
        import psycopg  # noqa: PLC0415

        with psycopg.connect(
            f"dbname=postgres user={self.user} host={self.socket_dir}", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A PostgreSQL cluster in a temp dir, unix socket only, owned by user postgres."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("needs Debian's postgresql (apt-get install postgresql): no initdb found")
    base = tempfile.mkdtemp(prefix="sofamesh-pg-")
    os.chmod(base, 0o755)  # noqa: S103  (the postgres user must reach its socket dir)
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:
        # initdb refuses to run as root.
        shutil.chown(base, "postgres", "postgres")
        run_as = {"user": "postgres", "group": "postgres"}
    data = f"{base}/data"
    subprocess.run(
        [
            bindir / "initdb",
            "-D",
            data,
            "-U",
            "sofamesh",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        **run_as,
    )
    options = f"-k {base} -c listen_addresses='' -c fsync=off -c max_connections=200"
    subprocess.run(
        [bindir / "pg_ctl", "-D", data, "-o", options, "-l", f"{base}/log", "-w", "start"],
        check=True,
        capture_output=True,
        **run_as,
    )
    try:
        yield PgCluster(base)
    finally:
        subprocess.run(
            [bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
            check=False,
            capture_output=True,
            **run_as,
        )
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class ConsoleProcess:
    db_url: str
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, deadline: float = 30.0) -> ConsoleProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "console",
                "serve",
                "--db",
                self.db_url,
                "--listen",
                f"127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        log.close()
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"console exited {proc.returncode}:\n{self.log()}")
            try:
                return httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        try:
            wait_until(ready, deadline=deadline, interval=0.1, what="console /api/v1/health")
        except LabTimeout:
            self.stop()
            raise RuntimeError(f"console not ready within {deadline}s:\n{self.log()}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_long_polls(self, count: int = 1, deadline: float = 10.0) -> None:
        """Until `count` agents are waiting in a long-poll here (a change made before that
        would be answered at once, not by a wake-up)."""
        wait_until(
            lambda: httpx.get(f"{self.url}/api/v1/health").json()["long_polls"] >= count,
            deadline=deadline,
            what=f"{count} long-poll(s) waiting",
        )

    def wait_for_log(self, text: str, deadline: float = 10.0) -> str:
        def found() -> str | None:
            log = self.log()
            return log if text in log else None

        return wait_until(found, deadline=deadline, interval=0.05, what=f"{text!r} in the log")


@dataclass
class Backend:
    name: str
    server: ConsoleProcess
    engine: Engine


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    base = tmp_path_factory.mktemp(f"console-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{base / 'console.db'}"
    else:
        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        # Unique: a session fixture with params can be set up more than once per session
        # (pytest-xdist orders tests so), on the same cluster.
        url = cluster.create_database(f"console_api_{secrets.token_hex(4)}")
    server = ConsoleProcess(url, base / "console.log").start()
    engine = make_engine(url)
    migrate(engine)
    try:
        yield Backend(request.param, server, engine)
    finally:
        server.stop()
        engine.dispose()


@dataclass(frozen=True)
class World:
    """One test's own scope, operator and access key."""

    backend: Backend
    tenant: str
    workspace: str
    instance: str
    user: str
    key_id: str
    secret: str

    @property
    def url(self) -> str:
        return self.backend.server.url


def make_world(backend: Backend, keys: int = 1) -> World:
    tag = secrets.token_hex(4)
    with sessions(backend.engine)() as db:
        user = admin.create_user(db, f"op-{tag}", PASSWORD)
        admin.create_tenant(db, f"t-{tag}")
        admin.create_workspace(db, f"t-{tag}", "ws")
        instance = admin.create_instance(db, f"t-{tag}", "ws", "inst")
        created = [admin.create_key(db, user, instance) for _ in range(keys)]
        db.commit()
    key_id, secret = (created[0].key_id, created[0].secret) if created else ("", "")
    return World(backend, f"t-{tag}", "ws", "inst", f"op-{tag}", key_id, secret)


@pytest.fixture
def world(backend: Backend) -> World:
    return make_world(backend)


def login(world: World) -> httpx.Client:
    client = httpx.Client(base_url=world.url, timeout=30)
    answer = client.post("/api/v1/session", json={"username": world.user, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    client.headers["X-CSRF-Token"] = answer.json()["csrf_token"]
    scope = {"tenant": world.tenant, "workspace": world.workspace, "instance_id": world.instance}
    assert client.put("/api/v1/session/scope", json=scope).status_code == 200
    return client


@pytest.fixture
def operator(world: World) -> Iterator[httpx.Client]:
    client = login(world)
    try:
        yield client
    finally:
        client.close()


def db_snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table but the ones that change on their own (nonces, sessions,
    sidecar snapshots): what "nothing was written" is checked against."""
    meta = MetaData()
    meta.reflect(engine)
    result: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as connection:
        for table in meta.sorted_tables:
            if table.name in VOLATILE_TABLES:
                continue
            rows = connection.execute(select(table)).all()
            result[table.name] = sorted((tuple(r) for r in rows), key=repr)
    return result
