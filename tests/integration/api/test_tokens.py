"""The internal API (/v1), tokens: the token endpoint and min_ttl, forced
refreshes, and a grant Workfront revoked (409 until the user re-authorizes)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from tests.support.api import assert_problem, parse_time, proj_search, token
from tests.support.broker import BrokerHarness, outlive_hot_cache
from tests.support.db import count, event_kinds, expire_soon
from tests.support.emulator import refresh_requests

TOKEN_FIELDS = {
    "connection_id",
    "session_id",
    "token_type",
    "expires_at",
    "workfront_url",
    "instance",
    "user_id",
    "session_version",
    "headers",
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
    assert response.headers["etag"] == f'"{body["session_version"]}"'
    assert body["headers"] == {"sessionID": body["session_id"]}
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


@pytest.mark.parametrize("min_ttl", [1501, 1800, 3600, 86400])
async def test_min_ttl_beyond_a_fresh_session_refreshes_once_per_session(
    broker: BrokerHarness, db: asyncpg.Connection, min_ttl: int
) -> None:
    """More than a refresh can give (1800 s sessions, 300 s ahead): the
    freshest session, one refresh per session, never one per read."""
    connection_id = await broker.connect("liam")
    connected = await token(broker, connection_id, broker.admin, min_ttl=0)
    # Fresh from the code exchange: already the freshest there is.
    for _ in range(5):
        same = await token(broker, connection_id, broker.admin, min_ttl=min_ttl)
        assert same.status_code == 200, same.text
        assert same.json()["session_id"] == connected.json()["session_id"]
    assert (await broker.emulator.stats())["refreshes_ok"] == 0

    await expire_soon(db, connection_id, 1000)  # aged 800 s
    await outlive_hot_cache()
    answers = [await token(broker, connection_id, broker.admin, min_ttl=min_ttl) for _ in range(20)]
    assert {answer.status_code for answer in answers} == {200}
    assert (await broker.emulator.stats())["refreshes_ok"] == 1
    body = answers[0].json()
    assert set(body) == TOKEN_FIELDS
    assert {answer.json()["session_id"] for answer in answers} == {body["session_id"]}
    assert body["session_id"] != connected.json()["session_id"]
    # expires_at says how much life the session really has.
    remaining = parse_time(body["expires_at"]) - datetime.now(UTC)
    assert timedelta(seconds=1700) < remaining <= timedelta(seconds=1800)
    assert await proj_search(broker, body["session_id"]) == 200
    row = await db.fetchrow("SELECT * FROM connections WHERE id = $1", connection_id)
    assert row["token_version"] == 2
    assert "refresh.succeeded" in await event_kinds(db)


async def test_min_ttl_within_a_fresh_session_is_honoured(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    connection_id = await broker.connect("lena")
    await expire_soon(db, connection_id, 1400)
    await outlive_hot_cache()
    kept = await token(broker, connection_id, broker.admin, min_ttl=1300)
    assert (await broker.emulator.stats())["refreshes_ok"] == 0
    renewed = await token(broker, connection_id, broker.admin, min_ttl=1450)
    assert renewed.status_code == 200, renewed.text
    assert (await broker.emulator.stats())["refreshes_ok"] == 1
    assert renewed.json()["session_id"] != kept.json()["session_id"]
    assert renewed.headers["etag"] != kept.headers["etag"]


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


# Conditional forced refresh (If-Match) ------------------------------------------------


def _refresh(
    broker: BrokerHarness, connection_id: uuid.UUID, headers: dict[str, str], if_match: str
) -> Awaitable[httpx.Response]:
    return broker.client.post(
        f"/v1/connections/{connection_id}/refresh", headers={**headers, "If-Match": if_match}
    )


async def test_if_match_refreshes_only_the_session_it_names(broker: BrokerHarness) -> None:
    connection_id = await broker.connect("otto")
    tokens = await broker.api_key("tokens:read")
    first = await token(broker, connection_id, tokens)
    rejected = first.headers["etag"]

    renewed = await _refresh(broker, connection_id, tokens, rejected)
    assert renewed.status_code == 200, renewed.text
    assert (await broker.emulator.stats())["refreshes_ok"] == 1
    assert renewed.json()["session_id"] != first.json()["session_id"]
    assert renewed.headers["etag"] != rejected
    assert renewed.headers["etag"] == f'"{renewed.json()["session_version"]}"'

    # A straggler that saw the same session rejected: the newer one, no upstream call.
    late = await _refresh(broker, connection_id, tokens, rejected)
    assert late.status_code == 200, late.text
    assert late.json() == renewed.json()
    assert late.headers["etag"] == renewed.headers["etag"]
    # In a list, with a weak tag and a tag the broker never issued beside it.
    listed = await _refresh(broker, connection_id, tokens, f'W/"x", "nope", {rejected}')
    assert listed.json() == renewed.json()
    assert (await broker.emulator.stats())["refreshes_ok"] == 1
    assert await proj_search(broker, late.json()["session_id"]) == 200

    # The new session rejected in its turn: its own ETag refreshes again.
    again = await _refresh(broker, connection_id, tokens, renewed.headers["etag"])
    assert again.json()["session_id"] != renewed.json()["session_id"]
    assert (await broker.emulator.stats())["refreshes_ok"] == 2
    assert await broker.emulator.presented_twice() == []


async def test_many_callers_with_one_rejected_session_cause_one_refresh(
    broker: BrokerHarness,
) -> None:
    connection_id = await broker.connect("pia")
    tokens = await broker.api_key("tokens:read")
    rejected = (await token(broker, connection_id, tokens)).headers["etag"]
    await broker.emulator.configure(latency_ms=200)
    answers = await asyncio.gather(
        *(_refresh(broker, connection_id, tokens, rejected) for _ in range(50))
    )
    assert {answer.status_code for answer in answers} == {200}
    assert len({answer.json()["session_id"] for answer in answers}) == 1
    assert len(await refresh_requests(broker.emulator)) == 1
    # Later ones, sent after it committed: no upstream call either.
    late = await asyncio.gather(
        *(_refresh(broker, connection_id, tokens, rejected) for _ in range(20))
    )
    assert {answer.json()["session_id"] for answer in late} == {answers[0].json()["session_id"]}
    assert len(await refresh_requests(broker.emulator)) == 1


async def test_if_match_with_a_stale_version_reads_the_row_another_replica_wrote(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    """Memory may hold the rejected session while the row holds a newer one."""
    connection_id = await broker.connect("quirin")
    tokens = await broker.api_key("tokens:read")
    seen = await token(broker, connection_id, tokens)  # now in memory
    # As another replica's refresh would: the row moves on, this process's memory not.
    await db.execute(
        "UPDATE connections SET token_version = token_version + 1 WHERE id = $1", connection_id
    )
    answer = await _refresh(broker, connection_id, tokens, seen.headers["etag"])
    assert answer.status_code == 200, answer.text
    assert answer.json()["session_version"] == str(int(seen.json()["session_version"]) + 1)
    assert (await broker.emulator.stats())["refreshes_ok"] == 0


@pytest.mark.parametrize("if_match", ['W/"1"', '"999"', '"x"', "null", '"1', '"1" "2"', ""])
async def test_if_match_naming_no_current_session_answers_the_current_one(
    broker: BrokerHarness, if_match: str
) -> None:
    connection_id = await broker.connect("rita")
    tokens = await broker.api_key("tokens:read")
    current = await token(broker, connection_id, tokens)
    assert current.headers["etag"] == '"1"'
    answer = await _refresh(broker, connection_id, tokens, if_match)
    assert answer.status_code == 200, answer.text
    assert answer.json() == current.json()
    assert (await broker.emulator.stats())["refreshes_ok"] == 0


async def test_if_match_star_is_an_unconditional_forced_refresh(broker: BrokerHarness) -> None:
    connection_id = await broker.connect("sven")
    tokens = await broker.api_key("tokens:read")
    answer = await _refresh(broker, connection_id, tokens, "*")
    assert answer.status_code == 200, answer.text
    assert (await broker.emulator.stats())["refreshes_ok"] == 1


async def test_if_match_on_an_unknown_connection_is_a_404(broker: BrokerHarness) -> None:
    tokens = await broker.api_key("tokens:read")
    answer = await _refresh(broker, uuid.uuid4(), tokens, '"1"')
    assert_problem(answer, 404, "not-found")


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
