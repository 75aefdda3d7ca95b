"""The broker for the tests: its settings, the app in process (its lifespan
really runs) called over ASGI, API keys, and the browser flow a person goes
through (authorize, sign in at the emulator, back to the callback)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from service.app import create_app
from service.config import Settings
from service.crypto import generate_key
from tests.support import ADMIN_KEY, BROKER_BASE, CLIENT_ID, CLIENT_SECRET
from tests.support.emulator import Emulator


def new_encryption_keys() -> str:
    """A keyring of one fresh key, k1."""
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
        "force_refresh_min_interval_seconds": 0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


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


@asynccontextmanager
async def running_broker(settings: Settings, emulator: Emulator) -> AsyncIterator[BrokerHarness]:
    """The broker app in process (its lifespan really runs), called over ASGI."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BROKER_BASE) as client:
            yield BrokerHarness(client=client, settings=settings, emulator=emulator, app=app)


@asynccontextmanager
async def shared_broker(settings: Settings, emulator_url: str) -> AsyncIterator[BrokerHarness]:
    """A broker app in process for many tests at once: the emulator is not reset
    for it, and an unhandled error answers 500 (as in production) instead of
    raising in the test."""
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(base_url=emulator_url, timeout=30) as control,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
            base_url=BROKER_BASE,
        ) as client,
    ):
        emulator = Emulator(base_url=emulator_url, control=control)
        yield BrokerHarness(client=client, settings=settings, emulator=emulator, app=app)


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


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def create_client(broker: BrokerHarness, name: str, *scopes: str) -> dict[str, Any]:
    """POST /v1/clients as admin; the answer, API key included."""
    response = await broker.client.post(
        "/v1/clients", json={"name": name, "scopes": list(scopes)}, headers=broker.admin
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def outlive_hot_cache() -> None:
    """Wait out the broker's in-memory caches (BROKER_HOT_CACHE_SECONDS < 1 s).

    A test that changes a row behind the broker's back plays another replica:
    the broker may answer from what it read less than a second ago, as the
    contract allows, and must see the change after that.
    """
    await asyncio.sleep(1.0)
