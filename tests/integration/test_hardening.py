"""Edges found in review: odd upstream values, lock waits, oversized and stale browser input."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from service.config import Settings
from tests.support.broker import BrokerHarness, login_at_emulator, running_broker
from tests.support.db import row_locked_elsewhere
from tests.support.emulator import Emulator


async def test_absurd_expires_in_is_capped_and_the_token_still_stored(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    await broker.emulator.configure(expires_in=10**15)
    connection_id = await broker.connect("forever")
    headers = await broker.api_key("tokens:read")
    refreshed = await broker.client.post(
        f"/v1/connections/{connection_id}/refresh", headers=headers
    )
    assert refreshed.status_code == 200, refreshed.text
    expires_at = await db.fetchval(
        "SELECT expires_at FROM connections WHERE id = $1", connection_id
    )
    assert expires_at - datetime.now(UTC) <= timedelta(days=366)
    assert (
        await db.fetchval("SELECT token_version FROM connections WHERE id = $1", connection_id) == 2
    )


async def test_a_refresh_waiting_too_long_for_the_row_lock_is_503(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
    database_url: str,
) -> None:
    async with running_broker(settings_for(lock_timeout_seconds=0.3), emulator) as broker:
        connection_id = await broker.connect("locked")
        headers = await broker.api_key("tokens:read")
        async with row_locked_elsewhere(database_url, connection_id):
            response = await broker.client.post(
                f"/v1/connections/{connection_id}/refresh", headers=headers
            )
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert "retry-after" in response.headers
        assert [r for r in await emulator.requests() if r["grant_type"] == "refresh_token"] == []


@pytest.mark.parametrize("param", ["code", "state", "domain", "lane", "error"])
async def test_oversized_callback_parameters_get_the_html_page(
    broker: BrokerHarness, db: asyncpg.Connection, param: str
) -> None:
    response = await broker.client.get("/oauth/callback", params={param: "x" * 5000})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")
    assert "malformed" in response.text
    assert await db.fetchval("SELECT count(*) FROM connections") == 0


@pytest.mark.parametrize("path", ["/connect", "/oauth/authorize"])
async def test_oversized_connect_link_gets_the_html_page(broker: BrokerHarness, path: str) -> None:
    response = await broker.client.get(path, params={"session": "s" * 5000})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")


async def test_a_connect_link_that_expires_mid_flow_cannot_complete(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
) -> None:
    settings = settings_for(allowed_return_urls="https://app.example.com/")
    async with running_broker(settings, emulator) as broker:
        writer = await broker.api_key("connections:write")
        link = await broker.client.post(
            "/v1/connect-sessions",
            json={"external_ref": "late", "return_url": "https://app.example.com/done"},
            headers=writer,
        )
        token = urlsplit(link.json()["url"]).path.removeprefix("/connect/")
        start = await broker.client.get("/oauth/authorize", params={"session": token})
        assert start.status_code == 302
        callback = await login_at_emulator(start.headers["location"], username="late")
        await db.execute("UPDATE connect_sessions SET expires_at = now() - interval '1 s'")
        response = await broker.client.get(callback)
        assert response.status_code == 400
        assert "expired" in response.text
        assert await db.fetchval("SELECT count(*) FROM connections") == 0


async def test_rejected_client_credentials_do_not_mark_users_needs_reauth(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
) -> None:
    async with running_broker(settings_for(), emulator) as good:
        connection_id = await good.connect("steady")
    wrong = settings_for(client_secret="a-mistyped-secret-value")
    async with running_broker(wrong, emulator) as broker:
        headers = await broker.api_key("tokens:read")
        response = await broker.client.post(
            f"/v1/connections/{connection_id}/refresh", headers=headers
        )
        assert response.status_code == 503
        status = await db.fetchval("SELECT status FROM connections WHERE id = $1", connection_id)
        assert status == "active"
        # A browser flow with the wrong secret says so plainly, storing nothing.
        callback = await broker.authorize("newcomer")
        page = await broker.client.get(callback)
        assert page.status_code == 502
        assert "app credentials" in page.text
    # Fixed configuration: the untouched grant still refreshes.
    async with running_broker(settings_for(), emulator) as fixed:
        headers = await fixed.api_key("tokens:read")
        await db.execute("UPDATE connections SET next_refresh_at = now()")
        again = await fixed.client.post(f"/v1/connections/{connection_id}/refresh", headers=headers)
        assert again.status_code == 200
    assert (await emulator.stats())["reuse_detected"] == 0


async def test_a_pooled_connection_killed_while_idle_costs_no_error(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    connection_id = await broker.connect("idle-pool")
    headers = await broker.api_key("tokens:read")
    url = f"/v1/connections/{connection_id}/token"
    assert (await broker.client.get(url, headers=headers)).status_code == 200
    # An idle timeout or a proxy ends the broker's pooled connections.
    killed = await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    assert killed >= 1
    response = await broker.client.get(url, headers=headers)
    assert response.status_code == 200, response.text


async def test_a_flood_of_sign_in_starts_and_forged_callbacks_stores_nothing(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    """An unauthenticated client starting sign-ins in a loop (each a new
    browser) or sending callbacks with made-up states fills no table."""
    states = []
    for _ in range(200):
        started = await broker.client.get("/oauth/authorize")
        assert started.status_code == 302
        states.append(parse_qs(urlsplit(started.headers["location"]).query)["state"][0])
        broker.client.cookies.clear()
    assert len(set(states)) == 200
    for state in states[:50]:
        # A real state, a made-up code, but no browser cookie: refused before storing.
        refused = await broker.client.get(f"/oauth/callback?code=made-up&state={state}")
        assert refused.status_code == 400
        forged = await broker.client.get(f"/oauth/callback?code=x&state={state[:-2]}AA")
        assert forged.status_code == 400
    assert await db.fetchval("SELECT count(*) FROM authorizations") == 0
