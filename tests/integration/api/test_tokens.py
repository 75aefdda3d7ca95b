"""The internal API (/v1), tokens: the token endpoint and min_ttl, forced
refreshes, and a grant Workfront revoked (409 until the user re-authorizes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from tests.support.api import assert_problem, parse_time, proj_search, token
from tests.support.broker import BrokerHarness
from tests.support.db import count, event_kinds

TOKEN_FIELDS = {
    "connection_id",
    "session_id",
    "token_type",
    "expires_at",
    "workfront_url",
    "user_id",
}


async def test_token_body_and_session_work(broker: BrokerHarness) -> None:
    connection_id = await broker.connect("jack")
    tokens = await broker.api_key("tokens:read")
    response = await token(broker, connection_id, tokens)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == TOKEN_FIELDS
    assert body["connection_id"] == str(connection_id)
    assert body["token_type"] == "sessionID"
    assert body["workfront_url"] == broker.emulator.base_url
    remaining = parse_time(body["expires_at"]) - datetime.now(UTC)
    assert timedelta(seconds=1700) < remaining <= timedelta(seconds=1800)
    shown = await broker.client.get(f"/v1/connections/{connection_id}", headers=broker.admin)
    assert body["user_id"] == shown.json()["user_id"]
    assert await proj_search(broker, body["session_id"]) == 200
    # Nothing refreshed: the session from the code exchange is handed out.
    assert (await broker.emulator.stats())["refreshes_ok"] == 0


@pytest.mark.parametrize("min_ttl", [None, 0, 1, 60, 1000, 1500])
async def test_small_min_ttl_does_not_refresh(
    broker: BrokerHarness, db: asyncpg.Connection, min_ttl: int | None
) -> None:
    connection_id = await broker.connect("kate")
    params = {} if min_ttl is None else {"min_ttl": min_ttl}
    first = await token(broker, connection_id, broker.admin, **params)
    second = await token(broker, connection_id, broker.admin, **params)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert (await broker.emulator.stats())["refreshes_ok"] == 0
    assert (
        await db.fetchval("SELECT token_version FROM connections WHERE id = $1", connection_id) == 1
    )


@pytest.mark.parametrize("min_ttl", [1800, 3600, 86400])
async def test_large_min_ttl_refreshes(
    broker: BrokerHarness, db: asyncpg.Connection, min_ttl: int
) -> None:
    connection_id = await broker.connect("liam")
    before = await token(broker, connection_id, broker.admin, min_ttl=0)
    stats = await broker.emulator.stats()
    after = await token(broker, connection_id, broker.admin, min_ttl=min_ttl)
    assert after.status_code == 200, after.text
    body = after.json()
    assert set(body) == TOKEN_FIELDS
    assert (await broker.emulator.stats())["refreshes_ok"] == stats["refreshes_ok"] + 1
    assert body["session_id"] != before.json()["session_id"]
    assert parse_time(body["expires_at"]) >= parse_time(before.json()["expires_at"])
    assert await proj_search(broker, body["session_id"]) == 200
    row = await db.fetchrow("SELECT * FROM connections WHERE id = $1", connection_id)
    assert row["token_version"] == 2
    assert "refresh.succeeded" in await event_kinds(db)
    # The stored session is now the refreshed one.
    again = await token(broker, connection_id, broker.admin, min_ttl=0)
    assert again.json()["session_id"] == body["session_id"]


async def test_forced_refresh_always_refreshes(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    connection_id = await broker.connect("mia")
    tokens = await broker.api_key("tokens:read")
    seen = {(await token(broker, connection_id, tokens)).json()["session_id"]}
    for round_ in range(1, 4):
        response = await broker.client.post(
            f"/v1/connections/{connection_id}/refresh", headers=tokens
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == TOKEN_FIELDS
        assert body["token_type"] == "sessionID"
        assert body["session_id"] not in seen
        seen.add(body["session_id"])
        assert (await broker.emulator.stats())["refreshes_ok"] == round_
        assert await proj_search(broker, body["session_id"]) == 200
    assert (
        await db.fetchval("SELECT token_version FROM connections WHERE id = $1", connection_id) == 4
    )
    assert await broker.emulator.presented_twice() == []


# Revoked grant ----------------------------------------------------------------------


async def test_revoked_grant_needs_reauth_then_recovers(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    connection_id = await broker.connect("nora")
    tokens = await broker.api_key("tokens:read")
    first = await token(broker, connection_id, tokens)
    user_id = first.json()["user_id"]
    revoked = await broker.emulator.control.post("/__emulator/revoke", json={"user_id": user_id})
    assert revoked.json() == {"revoked_grants": 1}

    refresh = await broker.client.post(f"/v1/connections/{connection_id}/refresh", headers=tokens)
    body = assert_problem(refresh, 409, "needs-reauth")
    assert "session_id" not in body
    shown = await broker.client.get(f"/v1/connections/{connection_id}", headers=broker.admin)
    assert shown.json()["status"] == "needs_reauth"
    row = await db.fetchrow("SELECT * FROM connections WHERE id = $1", connection_id)
    assert row["status"] == "needs_reauth"
    kinds = await event_kinds(db)
    assert "connection.needs_reauth" in kinds
    listed = await broker.client.get(
        "/v1/connections", params={"status": "needs_reauth"}, headers=broker.admin
    )
    assert [item["id"] for item in listed.json()] == [str(connection_id)]

    # The dead refresh token is never presented again.
    requests_before = len(await broker.emulator.requests())
    for response in (
        await token(broker, connection_id, tokens),
        await token(broker, connection_id, tokens, min_ttl=0),
        await token(broker, connection_id, tokens, min_ttl=86400),
        await broker.client.post(f"/v1/connections/{connection_id}/refresh", headers=tokens),
        await broker.client.post(f"/v1/connections/{connection_id}/refresh", headers=tokens),
    ):
        assert_problem(response, 409, "needs-reauth")
    assert len(await broker.emulator.requests()) == requests_before
    assert await broker.emulator.presented_twice() == []

    # Re-authorizing the same user brings the same connection back.
    again = await broker.connect("nora")
    assert again == connection_id
    shown = await broker.client.get(f"/v1/connections/{connection_id}", headers=broker.admin)
    assert shown.json()["status"] == "active"
    recovered = await token(broker, connection_id, tokens)
    assert recovered.status_code == 200, recovered.text
    assert await proj_search(broker, recovered.json()["session_id"]) == 200
    forced = await broker.client.post(f"/v1/connections/{connection_id}/refresh", headers=tokens)
    assert forced.status_code == 200, forced.text
    assert await count(db, "connections") == 1


async def test_revoking_one_user_leaves_others_alone(broker: BrokerHarness) -> None:
    victim = await broker.connect("olga")
    bystander = await broker.connect("paul")
    user_id = (await token(broker, victim, broker.admin)).json()["user_id"]
    await broker.emulator.control.post("/__emulator/revoke", json={"user_id": user_id})
    refresh = await broker.client.post(f"/v1/connections/{victim}/refresh", headers=broker.admin)
    assert_problem(refresh, 409, "needs-reauth")
    ok = await broker.client.post(f"/v1/connections/{bystander}/refresh", headers=broker.admin)
    assert ok.status_code == 200, ok.text


async def test_needs_reauth_connection_can_still_be_deleted(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    connection_id = await broker.connect("quinn")
    user_id = (await token(broker, connection_id, broker.admin)).json()["user_id"]
    await broker.emulator.control.post("/__emulator/revoke", json={"user_id": user_id})
    refresh = await broker.client.post(
        f"/v1/connections/{connection_id}/refresh", headers=broker.admin
    )
    assert_problem(refresh, 409, "needs-reauth")
    response = await broker.client.delete(f"/v1/connections/{connection_id}", headers=broker.admin)
    assert response.status_code == 204
    assert await count(db, "connections") == 0
    assert "connection.deleted" in await event_kinds(db)
