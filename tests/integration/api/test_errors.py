"""The internal API (/v1), bad input and unknown routes: each a problem-details
answer (RFC 9457) that writes nothing and calls nobody."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from tests.support.api import (
    CONNECTION_ROUTES,
    PROBLEM,
    ROUTES,
    Route,
    assert_problem,
    call,
    route_id,
)
from tests.support.broker import BrokerHarness
from tests.support.db import count

BAD_CLIENT_BODIES: list[tuple[str, Any]] = [
    ("missing-name", {"scopes": ["tokens:read"]}),
    ("missing-scopes", {"name": "svc"}),
    ("empty-body", {}),
    ("empty-name", {"name": "", "scopes": ["tokens:read"]}),
    ("blank-name", {"name": "   ", "scopes": ["tokens:read"]}),
    ("tab-name", {"name": "\t\n", "scopes": ["tokens:read"]}),
    ("101-char-name", {"name": "n" * 101, "scopes": ["tokens:read"]}),
    ("huge-name", {"name": "n" * 100_000, "scopes": ["tokens:read"]}),
    ("control-char-name", {"name": "svc\x07bell", "scopes": ["tokens:read"]}),
    ("nul-in-name", {"name": "svc\x00nul", "scopes": ["tokens:read"]}),
    ("name-not-string", {"name": 123, "scopes": ["tokens:read"]}),
    ("name-null", {"name": None, "scopes": ["tokens:read"]}),
    ("name-list", {"name": ["svc"], "scopes": ["tokens:read"]}),
    ("unknown-scope", {"name": "svc", "scopes": ["tokens:write"]}),
    ("scope-case", {"name": "svc", "scopes": ["Admin"]}),
    ("one-bad-scope", {"name": "svc", "scopes": ["tokens:read", "root"]}),
    ("empty-scopes", {"name": "svc", "scopes": []}),
    ("scopes-string", {"name": "svc", "scopes": "tokens:read"}),
    ("scopes-object", {"name": "svc", "scopes": {"tokens:read": True}}),
    ("scopes-null", {"name": "svc", "scopes": None}),
    ("scope-not-string", {"name": "svc", "scopes": [1]}),
    ("extra-field", {"name": "svc", "scopes": ["tokens:read"], "api_key": "wtb_chosen"}),
    ("json-array", [{"name": "svc", "scopes": ["tokens:read"]}]),
    ("json-string", "svc"),
    ("json-null", None),
    ("json-number", 42),
]


@pytest.mark.parametrize(
    "payload", [b for _, b in BAD_CLIENT_BODIES], ids=[n for n, _ in BAD_CLIENT_BODIES]
)
async def test_bad_client_body_is_422_and_writes_nothing(
    api: BrokerHarness, db: asyncpg.Connection, payload: Any
) -> None:
    clients_before = await count(db, "api_clients")
    events_before = await count(db, "events")
    response = await api.client.post("/v1/clients", json=payload, headers=api.admin)
    body = assert_problem(response, 422)
    assert "wtb_chosen" not in response.text  # input is never echoed
    assert isinstance(body.get("errors"), list)
    assert await count(db, "api_clients") == clients_before
    assert await count(db, "events") == events_before


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"", "application/json"),
        (b'{"name": "svc", "scopes": ["tokens:read"]', "application/json"),
        (
            b"\xff\xfe\x00",
            "application/json",
        ),
        (b"name=svc&scopes=tokens:read", "application/x-www-form-urlencoded"),
        (b'{"name": "svc", "scopes": ["tokens:read"]}', "text/plain"),
    ],
    ids=["garbage", "empty", "truncated", "binary", "form", "text-plain"],
)
async def test_non_json_client_body_is_422(
    api: BrokerHarness, db: asyncpg.Connection, content: bytes, content_type: str
) -> None:
    clients_before = await count(db, "api_clients")
    response = await api.client.post(
        "/v1/clients",
        content=content,
        headers={**api.admin, "content-type": content_type},
    )
    assert_problem(response, 422)
    assert await count(db, "api_clients") == clients_before


async def test_lone_surrogate_in_client_name_is_422(
    api: BrokerHarness, db: asyncpg.Connection
) -> None:
    clients_before = await count(db, "api_clients")
    response = await api.client.post(
        "/v1/clients",
        content=b'{"name": "svc\\ud800", "scopes": ["tokens:read"]}',
        headers={**api.admin, "content-type": "application/json"},
    )
    assert_problem(response, 422)
    assert await count(db, "api_clients") == clients_before


BAD_UUIDS = [
    "not-a-uuid",
    "1",
    "0",
    "00000000-0000-0000-0000-00000000000g",
    "00000000-0000-0000-0000-0000000000000",
    "x" * 300,
    "%20",
    "null",
    "'; DROP TABLE connections; --",
]


@pytest.mark.parametrize("bad_id", BAD_UUIDS)
@pytest.mark.parametrize(
    "route",
    [*CONNECTION_ROUTES, ROUTES[-1]],
    ids=route_id,
)
async def test_non_uuid_id_is_422(
    api: BrokerHarness, db: asyncpg.Connection, route: Route, bad_id: str
) -> None:
    before = (await count(db, "connections"), await count(db, "events"))
    requests_before = len(await api.emulator.requests())
    response = await call(api, route, api.admin, bad_id)
    body = assert_problem(response, 422, "invalid-request")
    assert body["errors"]
    assert (await count(db, "connections"), await count(db, "events")) == before
    assert len(await api.emulator.requests()) == requests_before


@pytest.mark.parametrize(
    "min_ttl",
    ["-1", "-86400", "1.5", "abc", "", "1e3", "86401", "99999999999999999999999", "0x10"],
)
async def test_bad_min_ttl_is_422(api: BrokerHarness, db: asyncpg.Connection, min_ttl: str) -> None:
    connection_id = await api.connect("min-ttl-user")
    refreshes = (await api.emulator.stats())["refreshes_ok"]
    version = await db.fetchval(
        "SELECT token_version FROM connections WHERE id = $1", connection_id
    )
    response = await api.client.get(
        f"/v1/connections/{connection_id}/token?min_ttl={min_ttl}", headers=api.admin
    )
    assert_problem(response, 422, "invalid-request")
    assert (await api.emulator.stats())["refreshes_ok"] == refreshes
    assert (
        await db.fetchval("SELECT token_version FROM connections WHERE id = $1", connection_id)
        == version
    )


@pytest.mark.parametrize(
    "query",
    [
        "status=revoked",
        "status=ACTIVE",
        "status=",
        "user_id=" + "u" * 65,
        "external_ref=" + "r" * 256,
        "limit=0",
        "limit=1001",
        "limit=-5",
        "limit=abc",
        "offset=-1",
        "offset=x",
    ],
)
async def test_bad_list_filters_are_422(api: BrokerHarness, query: str) -> None:
    response = await api.client.get(f"/v1/connections?{query}", headers=api.admin)
    assert_problem(response, 422, "invalid-request")


@pytest.mark.parametrize(
    "query",
    [
        "offset=99999999999999999999",
        "user_id=%00",
        "external_ref=ref%00x",
    ],
)
async def test_list_filters_that_postgres_cannot_take_are_4xx(
    api: BrokerHarness, query: str
) -> None:
    response = await api.client.get(f"/v1/connections?{query}", headers=api.admin)
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith(PROBLEM)


@pytest.mark.parametrize("route", CONNECTION_ROUTES, ids=route_id)
async def test_unknown_connection_is_404(
    api: BrokerHarness, db: asyncpg.Connection, route: Route
) -> None:
    await api.connect("someone-else")
    before = (await count(db, "connections"), await count(db, "events"))
    requests_before = len(await api.emulator.requests())
    response = await call(api, route, api.admin)
    assert_problem(response, 404, "not-found")
    assert (await count(db, "connections"), await count(db, "events")) == before
    assert len(await api.emulator.requests()) == requests_before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1"),
        ("GET", "/v1/"),
        ("GET", "/v1/nope"),
        ("GET", "/v1/connections/{id}/nope"),
        ("GET", "/v1/connections/{id}/token/extra"),
        ("POST", "/v1/tokens"),
        ("GET", "/v2/connections"),
        ("GET", "/v1/clients/{id}/key"),
    ],
)
@pytest.mark.parametrize("authenticated", [True, False], ids=["key", "no-key"])
async def test_unknown_route_is_404_problem(
    api: BrokerHarness, method: str, path: str, authenticated: bool
) -> None:
    headers = api.admin if authenticated else {}
    response = await api.client.request(
        method, path.replace("{id}", str(uuid.uuid4())), headers=headers
    )
    assert_problem(response, 404, "not-found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/clients"),
        ("PATCH", "/v1/clients"),
        ("DELETE", "/v1/clients"),
        ("GET", "/v1/clients/{id}"),
        ("POST", "/v1/clients/{id}"),
        ("POST", "/v1/connections"),
        ("DELETE", "/v1/connections"),
        ("PUT", "/v1/connections/{id}"),
        ("PATCH", "/v1/connections/{id}"),
        ("POST", "/v1/connections/{id}/token"),
        ("DELETE", "/v1/connections/{id}/token"),
        ("GET", "/v1/connections/{id}/refresh"),
    ],
)
async def test_wrong_method_is_405_problem(
    api: BrokerHarness, db: asyncpg.Connection, method: str, path: str
) -> None:
    before = (await count(db, "api_clients"), await count(db, "events"))
    response = await api.client.request(
        method, path.replace("{id}", str(uuid.uuid4())), headers=api.admin
    )
    assert_problem(response, 405, "method-not-allowed")
    assert response.headers.get("allow")
    assert (await count(db, "api_clients"), await count(db, "events")) == before
