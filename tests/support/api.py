"""The internal API (/v1) as the API tests see it: every route with the scope it
needs, and what a problem-details answer must look like."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from tests.support.broker import BrokerHarness

PROBLEM = "application/problem+json"
HeaderMap = dict[str, str] | dict[bytes, bytes]
PROJ_SEARCH = "/attask/api/v21.0/proj/search"
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


def route_id(route: Route) -> str:
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
