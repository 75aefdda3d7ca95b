"""The internal API (/v1), connections: list, show and filter them (never a token
in them), delete them (logging the session out at Workfront)."""

from __future__ import annotations

import uuid

import asyncpg

from tests.support.api import SECRET_FIELDS, assert_problem, parse_time, proj_search, token
from tests.support.broker import BrokerHarness, bearer, create_client
from tests.support.db import count

CONNECTION_FIELDS = {
    "id",
    "user_id",
    "customer_id",
    "wid",
    "external_ref",
    "status",
    "expires_at",
    "last_refreshed_at",
    "created_at",
}


async def test_list_and_show_connections_never_carry_a_token(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    alice = await broker.connect("alice")
    bob = await broker.connect("bob")
    tokens = await broker.api_key("tokens:read")
    session_ids = set()
    for connection_id in (alice, bob):
        issued = await token(broker, connection_id, tokens)
        assert issued.status_code == 200, issued.text
        session_ids.add(issued.json()["session_id"])
    forced = await broker.client.post(f"/v1/connections/{alice}/refresh", headers=tokens)
    session_ids.add(forced.json()["session_id"])
    requests = await broker.emulator.requests()
    refresh_tokens = {r["refresh_token"] for r in requests if r.get("refresh_token")}
    secrets_seen = session_ids | refresh_tokens
    stored = await db.fetch("SELECT access_token_enc, refresh_token_enc FROM connections")
    secrets_seen |= {
        row[col] for row in stored for col in ("access_token_enc", "refresh_token_enc")
    }

    reader = await broker.api_key("connections:read")
    listing = await broker.client.get("/v1/connections", headers=reader)
    assert listing.status_code == 200, listing.text
    assert listing.headers["content-type"].startswith("application/json")
    items = listing.json()
    assert [item["id"] for item in items] == [str(alice), str(bob)]
    responses = [listing]
    for item in items:
        assert CONNECTION_FIELDS <= set(item), item
        assert not SECRET_FIELDS & set(item), item
        assert item["status"] == "active"
        assert item["external_ref"] is None
        assert item["customer_id"]
        assert item["wid"]
        for field in ("expires_at", "last_refreshed_at", "created_at"):
            parse_time(item[field])
        detail = await broker.client.get(f"/v1/connections/{item['id']}", headers=reader)
        assert detail.status_code == 200, detail.text
        assert detail.json() == item
        responses.append(detail)
    for response in responses:
        for secret in secrets_seen:
            assert secret not in response.text
    assert items[0]["user_id"] != items[1]["user_id"]


async def test_list_filters(broker: BrokerHarness, db: asyncpg.Connection) -> None:
    ids = {name: await broker.connect(name) for name in ("carol", "dave", "erin")}
    await db.execute(
        "UPDATE connections SET external_ref = 'crm-42' WHERE id = ANY($1::uuid[])",
        [ids["carol"], ids["erin"]],
    )
    await db.execute("UPDATE connections SET status = 'needs_reauth' WHERE id = $1", ids["erin"])
    reader = await broker.api_key("connections:read")

    async def listed(**params: str | int) -> list[str]:
        response = await broker.client.get("/v1/connections", params=params, headers=reader)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()]

    everything = await listed()
    assert sorted(everything) == sorted(str(i) for i in ids.values())
    detail = (await broker.client.get(f"/v1/connections/{ids['dave']}", headers=reader)).json()
    assert await listed(user_id=detail["user_id"]) == [str(ids["dave"])]
    assert await listed(user_id="no-such-user") == []
    assert sorted(await listed(external_ref="crm-42")) == sorted(
        [str(ids["carol"]), str(ids["erin"])]
    )
    assert await listed(external_ref="crm-43") == []
    assert sorted(await listed(status="active")) == sorted([str(ids["carol"]), str(ids["dave"])])
    assert await listed(status="needs_reauth") == [str(ids["erin"])]
    assert await listed(external_ref="crm-42", status="active") == [str(ids["carol"])]
    assert await listed(user_id=detail["user_id"], status="needs_reauth") == []
    assert await listed(limit=2) == everything[:2]
    assert await listed(limit=2, offset=2) == everything[2:]
    assert await listed(offset=10) == []
    # A page that leaves some out says where the next one is (RFC 8288).
    first = await broker.client.get(
        "/v1/connections", params={"limit": 2, "status": "active"}, headers=reader
    )
    assert "Link" not in first.headers  # both active ones fit
    first = await broker.client.get("/v1/connections", params={"limit": 2}, headers=reader)
    link = first.headers["Link"]
    assert link.endswith('>; rel="next"')
    following = await broker.client.get(link[1 : link.index(">")], headers=reader)
    assert [item["id"] for item in following.json()] == everything[2:]
    assert "Link" not in following.headers
    assert "Link" not in (await broker.client.get("/v1/connections", headers=reader)).headers
    erin = (await broker.client.get(f"/v1/connections/{ids['erin']}", headers=reader)).json()
    assert erin["status"] == "needs_reauth"
    assert erin["external_ref"] == "crm-42"


async def test_empty_list(broker: BrokerHarness) -> None:
    response = await broker.client.get("/v1/connections", headers=broker.admin)
    assert response.status_code == 200
    assert response.json() == []


async def test_delete_connection(broker: BrokerHarness, db: asyncpg.Connection) -> None:
    connection_id = await broker.connect("frank")
    other = await broker.connect("grace")
    tokens = await broker.api_key("tokens:read")
    issued = await token(broker, connection_id, tokens)
    session_id = issued.json()["session_id"]
    assert await proj_search(broker, session_id) == 200
    writer = await create_client(broker, "deleter", "connections:write")

    response = await broker.client.delete(
        f"/v1/connections/{connection_id}", headers=bearer(writer["api_key"])
    )
    assert response.status_code == 204, response.text
    assert response.content == b""

    assert await db.fetchval("SELECT count(*) FROM connections WHERE id = $1", connection_id) == 0
    assert await db.fetchval("SELECT count(*) FROM connections WHERE id = $1", other) == 1
    # The emulator saw a logout: the session fetched before deletion is dead.
    assert await proj_search(broker, session_id) == 401
    event = await db.fetchrow(
        "SELECT * FROM events WHERE kind = 'connection.deleted' AND connection_id = $1",
        connection_id,
    )
    assert event is not None
    assert event["client_id"] == uuid.UUID(writer["id"])
    assert session_id not in str(event["detail"])

    assert_problem(await token(broker, connection_id, tokens), 404, "not-found")
    refresh = await broker.client.post(f"/v1/connections/{connection_id}/refresh", headers=tokens)
    assert_problem(refresh, 404, "not-found")
    shown = await broker.client.get(f"/v1/connections/{connection_id}", headers=broker.admin)
    assert_problem(shown, 404, "not-found")
    again = await broker.client.delete(f"/v1/connections/{connection_id}", headers=broker.admin)
    assert_problem(again, 404, "not-found")
    listing = await broker.client.get("/v1/connections", headers=broker.admin)
    assert [item["id"] for item in listing.json()] == [str(other)]
    # The other user's connection still hands out tokens.
    assert (await token(broker, other, tokens)).status_code == 200


async def test_delete_works_when_the_session_is_already_gone(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    connection_id = await broker.connect("henry")
    (await broker.emulator.control.post("/__emulator/expire-sessions")).raise_for_status()
    response = await broker.client.delete(f"/v1/connections/{connection_id}", headers=broker.admin)
    assert response.status_code == 204, response.text
    assert await count(db, "connections") == 0


async def test_deleted_user_can_connect_again_as_a_new_connection(broker: BrokerHarness) -> None:
    first = await broker.connect("iris")
    response = await broker.client.delete(f"/v1/connections/{first}", headers=broker.admin)
    assert response.status_code == 204
    second = await broker.connect("iris")
    assert second != first
    assert (await token(broker, second, broker.admin)).status_code == 200
