"""The internal API (/v1), who may call it: no key or a bad one is 401, a key
without the route's scope is 403, admin implies every scope."""

from __future__ import annotations

import secrets

import asyncpg
import pytest

from tests.support import ADMIN_KEY
from tests.support.api import ROUTES, HeaderMap, Route, assert_problem, call, route_id
from tests.support.broker import BrokerHarness
from tests.support.db import count

SCOPES = ("tokens:read", "connections:read", "connections:write", "admin")


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


@pytest.mark.parametrize("route", ROUTES, ids=route_id)
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


@pytest.mark.parametrize("route", ROUTES, ids=route_id)
async def test_key_with_exactly_the_scope_passes(api: BrokerHarness, route: Route) -> None:
    headers = await api.api_key(route.scope)
    response = await call(api, route, headers)
    assert response.status_code == route.ok_status, response.text


@pytest.mark.parametrize("route", ROUTES, ids=route_id)
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
