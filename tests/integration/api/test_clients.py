"""The internal API (/v1), API clients: a key shown once and stored hashed,
scopes kept as asked, revocation that bites at once."""

from __future__ import annotations

import hashlib
import re
import uuid

import asyncpg
import pytest

from tests.support.api import ROUTES, SECRET_FIELDS, Route, assert_problem, call
from tests.support.broker import BrokerHarness, bearer, create_client
from tests.support.db import count, event_kinds

KEY_RE = re.compile(r"^wtb_[A-Za-z0-9_-]{43,}$")


@pytest.mark.parametrize(
    ("scopes", "route"),
    [
        (["tokens:read"], ROUTES[0]),
        (["connections:read"], ROUTES[2]),
        (["connections:write"], ROUTES[4]),
        (["admin"], ROUTES[6]),
        (["connections:read", "tokens:read"], ROUTES[3]),
    ],
    ids=["tokens-read", "connections-read", "connections-write", "admin", "two-scopes"],
)
async def test_create_client_returns_a_working_key_once(
    broker: BrokerHarness, db: asyncpg.Connection, scopes: list[str], route: Route
) -> None:
    response = await broker.client.post(
        "/v1/clients", json={"name": "reporting", "scopes": scopes}, headers=broker.admin
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"id", "name", "scopes", "instances", "connections", "api_key"}
    client_id = uuid.UUID(body["id"])
    assert body["name"] == "reporting"
    assert sorted(body["scopes"]) == sorted(scopes)
    key: str = body["api_key"]
    assert KEY_RE.match(key), key

    works = await call(broker, route, bearer(key))
    assert works.status_code == route.ok_status, works.text

    listing = await broker.client.get("/v1/clients", headers=broker.admin)
    assert listing.status_code == 200
    assert key not in listing.text
    assert key[len("wtb_") + 4 :] not in listing.text
    (entry,) = [c for c in listing.json() if c["id"] == str(client_id)]
    assert not SECRET_FIELDS & set(entry)
    assert entry["name"] == "reporting"
    assert sorted(entry["scopes"]) == sorted(scopes)
    assert entry["revoked_at"] is None
    hint: str = entry["key_hint"]
    assert key.startswith(hint)
    assert len("wtb_") < len(hint) <= 12

    row = await db.fetchrow("SELECT * FROM api_clients WHERE id = $1", client_id)
    assert bytes(row["key_hash"]) == hashlib.sha256(key.encode()).digest()
    assert len(row["key_hash"]) == 32
    # The key is in no column of any table, in any form but the hash.
    for table in ("api_clients", "events"):
        dump = await db.fetchval(f"SELECT coalesce(string_agg(t::text, '|'), '') FROM {table} t")  # noqa: S608
        assert key not in dump
        assert key[len("wtb_") + 4 :] not in dump

    event = await db.fetchrow(
        "SELECT * FROM events WHERE kind = 'client.created' AND detail->>'new_client_id' = $1",
        str(client_id),
    )
    assert event is not None


async def test_client_name_is_trimmed_and_scopes_deduplicated(broker: BrokerHarness) -> None:
    body = await create_client(broker, "  spaced  ", "tokens:read", "tokens:read")
    assert body["name"] == "spaced"
    assert body["scopes"] == ["tokens:read"]


async def test_client_scopes_come_back_in_the_order_asked(broker: BrokerHarness) -> None:
    asked = ["tokens:read", "connections:write", "connections:read", "tokens:read"]
    body = await create_client(broker, "ordered", *asked)
    assert body["scopes"] == ["tokens:read", "connections:write", "connections:read"]
    listed = await broker.client.get("/v1/clients", headers=broker.admin)
    (mine,) = [client for client in listed.json() if client["id"] == body["id"]]
    assert mine["scopes"] == body["scopes"]


async def test_two_clients_get_different_keys(broker: BrokerHarness) -> None:
    first = await create_client(broker, "same-name", "tokens:read")
    second = await create_client(broker, "same-name", "tokens:read")
    assert first["id"] != second["id"]
    assert first["api_key"] != second["api_key"]


async def test_revoke_client(broker: BrokerHarness, db: asyncpg.Connection) -> None:
    created = await create_client(broker, "short-lived", "connections:read")
    key = created["api_key"]
    # Warm the authenticator's cache: revocation must still bite on the next request.
    assert (await broker.client.get("/v1/connections", headers=bearer(key))).status_code == 200

    revoked = await broker.client.delete(f"/v1/clients/{created['id']}", headers=broker.admin)
    assert revoked.status_code == 204
    assert revoked.content == b""

    after = await broker.client.get("/v1/connections", headers=bearer(key))
    assert_problem(after, 401, "unauthorized")
    assert after.headers["www-authenticate"] == "Bearer"

    again = await broker.client.delete(f"/v1/clients/{created['id']}", headers=broker.admin)
    assert_problem(again, 404, "not-found")

    listing = (await broker.client.get("/v1/clients", headers=broker.admin)).json()
    (entry,) = [c for c in listing if c["id"] == created["id"]]
    assert entry["revoked_at"] is not None

    kinds = await event_kinds(db)
    assert kinds.count("client.created") == 1
    assert kinds.count("client.revoked") == 1
    detail = await db.fetchval(
        "SELECT detail->>'revoked_client_id' FROM events WHERE kind = 'client.revoked'"
    )
    assert detail == created["id"]


async def test_revoked_admin_client_loses_every_scope(broker: BrokerHarness) -> None:
    created = await create_client(broker, "ex-admin", "admin")
    headers = bearer(created["api_key"])
    assert (await broker.client.get("/v1/clients", headers=headers)).status_code == 200
    revoked = await broker.client.delete(f"/v1/clients/{created['id']}", headers=broker.admin)
    assert revoked.status_code == 204
    for route in ROUTES:
        assert_problem(await call(broker, route, headers), 401, "unauthorized")


async def test_client_can_revoke_itself_with_admin_scope(broker: BrokerHarness) -> None:
    created = await create_client(broker, "self-revoker", "admin")
    headers = bearer(created["api_key"])
    revoked = await broker.client.delete(f"/v1/clients/{created['id']}", headers=headers)
    assert revoked.status_code == 204
    assert_problem(await broker.client.get("/v1/clients", headers=headers), 401)


async def test_revoke_unknown_client_is_404(api: BrokerHarness, db: asyncpg.Connection) -> None:
    events_before = await count(db, "events")
    response = await api.client.delete(f"/v1/clients/{uuid.uuid4()}", headers=api.admin)
    assert_problem(response, 404, "not-found")
    assert await count(db, "events") == events_before
