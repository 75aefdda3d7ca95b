"""The internal API (/v1): auth, clients, bad input, connections, tokens, revoked grants."""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from service.app import create_app
from tests.support import ADMIN_KEY, BROKER_BASE
from tests.support.broker import BrokerHarness, make_settings
from tests.support.emulator import Emulator

SCOPES = ("tokens:read", "connections:read", "connections:write", "admin")
PROBLEM = "application/problem+json"
HeaderMap = dict[str, str] | dict[bytes, bytes]
PROJ_SEARCH = "/attask/api/v21.0/proj/search"
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
TOKEN_FIELDS = {
    "connection_id",
    "session_id",
    "token_type",
    "expires_at",
    "workfront_url",
    "user_id",
}
# Column names that would betray a token leaking into a listing.
SECRET_FIELDS = {
    "access_token",
    "refresh_token",
    "access_token_enc",
    "refresh_token_enc",
    "session_id",
    "token",
    "api_key",
    "key_hash",
}


# Helpers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def api(
    database_url: str, emulator_url: str, encryption_keys: str
) -> AsyncIterator[BrokerHarness]:
    """One broker for the whole module, for tests that only compare before/after.

    Starting a broker costs ~0.1 s (TLS contexts, engine); the hundreds of
    stateless auth and bad-input cases share this one instead of ``broker``.
    """
    settings = make_settings(database_url, emulator_url, encryption_keys)
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(base_url=emulator_url, timeout=30) as control,
        # An unhandled error answers 500 (as in production) instead of raising here.
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
            base_url=BROKER_BASE,
        ) as client,
    ):
        emulator = Emulator(base_url=emulator_url, control=control)
        yield BrokerHarness(client=client, settings=settings, emulator=emulator, app=app)


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # "{id}" stands for a connection or client id
    scope: str
    ok_status: int  # answer for a sufficient key and a random (unknown) id
    body: dict[str, Any] | None = None

    def url(self, some_id: uuid.UUID | str) -> str:
        return self.path.replace("{id}", str(some_id))

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


ROUTES = (
    Route("GET", "/v1/connections/{id}/token", "tokens:read", 404),
    Route("POST", "/v1/connections/{id}/refresh", "tokens:read", 404),
    Route("GET", "/v1/connections", "connections:read", 200),
    Route("GET", "/v1/connections/{id}", "connections:read", 404),
    Route("DELETE", "/v1/connections/{id}", "connections:write", 404),
    Route("POST", "/v1/clients", "admin", 201, {"name": "matrix", "scopes": ["tokens:read"]}),
    Route("GET", "/v1/clients", "admin", 200),
    Route("DELETE", "/v1/clients/{id}", "admin", 404),
)
CONNECTION_ROUTES = [r for r in ROUTES if r.path.startswith("/v1/connections/{id}")]


def _route_id(route: Route) -> str:
    return str(route)


async def call(
    broker: BrokerHarness,
    route: Route,
    headers: HeaderMap | None,
    some_id: uuid.UUID | str | None = None,
) -> httpx.Response:
    return await broker.client.request(
        route.method,
        route.url(some_id if some_id is not None else uuid.uuid4()),
        headers=headers,
        json=route.body,
    )


def assert_problem(
    response: httpx.Response, status: int, type_suffix: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body: dict[str, Any] = response.json()
    assert isinstance(body.get("type"), str)
    assert body["type"]
    assert isinstance(body.get("title"), str)
    assert body["title"]
    assert body["status"] == status
    if type_suffix is not None:
        assert body["type"].endswith(type_suffix), body
    return body


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def create_client(broker: BrokerHarness, name: str, *scopes: str) -> dict[str, Any]:
    response = await broker.client.post(
        "/v1/clients", json={"name": name, "scopes": list(scopes)}, headers=broker.admin
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def count(db: asyncpg.Connection, table: str) -> int:
    value: int = await db.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608 (constant)
    return value


async def event_kinds(db: asyncpg.Connection) -> list[str]:
    rows = await db.fetch("SELECT kind FROM events ORDER BY id")
    return [row["kind"] for row in rows]


async def proj_search(broker: BrokerHarness, session_id: str) -> int:
    response = await broker.emulator.control.get(PROJ_SEARCH, headers={"sessionID": session_id})
    return response.status_code


async def token(
    broker: BrokerHarness, connection_id: uuid.UUID, headers: dict[str, str], **params: int
) -> httpx.Response:
    return await broker.client.get(
        f"/v1/connections/{connection_id}/token", headers=headers, params=params
    )


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


# 1. Auth matrix -----------------------------------------------------------------------

UNAUTHENTICATED: list[tuple[str, HeaderMap]] = [
    ("no-header", {}),
    ("basic", {"Authorization": "Basic x"}),
    ("basic-with-admin-key", {"Authorization": f"Basic {ADMIN_KEY}"}),
    ("token-scheme", {"Authorization": f"Token {ADMIN_KEY}"}),
    ("bearer-only", {"Authorization": "Bearer"}),
    ("bearer-space", {"Authorization": "Bearer "}),
    ("empty", {"Authorization": ""}),
    ("admin-key-bare", {"Authorization": ADMIN_KEY}),
    ("very-long", {"Authorization": "Bearer " + "a" * 10_000}),
    ("very-long-prefixed", {"Authorization": "Bearer wtb_" + "A" * 5_000}),
    ("unknown-key", {"Authorization": "Bearer wtb_" + secrets.token_urlsafe(32)}),
    ("admin-key-suffixed", {"Authorization": f"Bearer {ADMIN_KEY}x"}),
    ("admin-key-truncated", {"Authorization": f"Bearer {ADMIN_KEY[:-1]}"}),
    ("non-ascii", {b"Authorization": b"Bearer \xff\xfe\xc3\xa9key"}),
]


@pytest.mark.parametrize("route", ROUTES, ids=_route_id)
@pytest.mark.parametrize(
    "headers", [h for _, h in UNAUTHENTICATED], ids=[n for n, _ in UNAUTHENTICATED]
)
async def test_unauthenticated_is_401(
    api: BrokerHarness,
    db: asyncpg.Connection,
    route: Route,
    headers: HeaderMap,
) -> None:
    clients_before = await count(db, "api_clients")
    response = await call(api, route, headers)
    body = assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"
    # The presented credential is never echoed back.
    assert "aaaaaaaaaa" not in response.text
    assert ADMIN_KEY not in response.text
    assert "detail" not in body or isinstance(body["detail"], str)
    assert await count(db, "api_clients") == clients_before


def _lacking() -> list[tuple[Route, tuple[str, ...]]]:
    cases: list[tuple[Route, tuple[str, ...]]] = []
    for route in ROUTES:
        others = tuple(s for s in SCOPES if s not in (route.scope, "admin"))
        cases.extend((route, (scope,)) for scope in others)
        if len(others) > 1:
            cases.append((route, others))
    return cases


@pytest.mark.parametrize(
    ("route", "scopes"),
    _lacking(),
    ids=[f"{r}-{'+'.join(s)}" for r, s in _lacking()],
)
async def test_key_without_the_scope_is_403(
    api: BrokerHarness, db: asyncpg.Connection, route: Route, scopes: tuple[str, ...]
) -> None:
    headers = await api.api_key(*scopes)
    clients_before = await count(db, "api_clients")
    events_before = await count(db, "events")
    response = await call(api, route, headers)
    assert_problem(response, 403, "forbidden")
    assert route.scope in response.json().get("detail", "")
    assert await count(db, "api_clients") == clients_before
    assert await count(db, "events") == events_before


@pytest.mark.parametrize("route", ROUTES, ids=_route_id)
async def test_key_with_exactly_the_scope_passes(api: BrokerHarness, route: Route) -> None:
    headers = await api.api_key(route.scope)
    response = await call(api, route, headers)
    assert response.status_code == route.ok_status, response.text


@pytest.mark.parametrize("route", ROUTES, ids=_route_id)
@pytest.mark.parametrize("who", ["bootstrap", "stored-client"])
async def test_admin_implies_every_scope(api: BrokerHarness, route: Route, who: str) -> None:
    headers = api.admin if who == "bootstrap" else await api.api_key("admin")
    response = await call(api, route, headers)
    assert response.status_code == route.ok_status, response.text
    if response.status_code >= 400:
        assert_problem(response, route.ok_status, "not-found")


async def test_lowercase_bearer_scheme_is_accepted(api: BrokerHarness) -> None:
    response = await api.client.get("/v1/clients", headers={"Authorization": f"bearer {ADMIN_KEY}"})
    assert response.status_code == 200, response.text


async def test_real_connection_is_untouched_by_a_forbidden_delete(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    connection_id = await broker.connect("ivan")
    for scopes in (("connections:read",), ("tokens:read",), ("tokens:read", "connections:read")):
        headers = await broker.api_key(*scopes)
        response = await broker.client.delete(f"/v1/connections/{connection_id}", headers=headers)
        assert_problem(response, 403, "forbidden")
    assert await db.fetchval("SELECT count(*) FROM connections WHERE id = $1", connection_id) == 1


async def test_malformed_body_without_key_is_401_not_422(api: BrokerHarness) -> None:
    response = await api.client.post(
        "/v1/clients", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_problem(response, 401, "unauthorized")


# 2. Clients ---------------------------------------------------------------------------


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
    assert set(body) == {"id", "name", "scopes", "api_key"}
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


# 3. Bad input -------------------------------------------------------------------------

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
    ids=_route_id,
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


@pytest.mark.parametrize("route", CONNECTION_ROUTES, ids=_route_id)
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


# 4. Connections -----------------------------------------------------------------------


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


# 5. Token endpoint --------------------------------------------------------------------


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


# 6. Revoked grant ---------------------------------------------------------------------


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
