"""One-time connect links made by internal services."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest

from service.config import Settings
from tests.support import BROKER_BASE
from tests.support.broker import BrokerHarness, login_at_emulator, running_broker
from tests.support.emulator import Emulator

RETURN = "https://app.example.com/workfront"


@pytest.fixture
async def linked_broker(
    clean_db: None, emulator: Emulator, settings_for: Callable[..., Settings]
) -> AsyncIterator[BrokerHarness]:
    settings = settings_for(allowed_return_urls=f"{RETURN}, https://other.example.com/")
    async with running_broker(settings, emulator) as harness:
        yield harness


async def _make_link(broker: BrokerHarness, **body: str) -> dict[str, str]:
    headers = await broker.api_key("connections:write")
    response = await broker.client.post(
        "/v1/connect-sessions",
        json={"external_ref": "user-42", "return_url": f"{RETURN}/done", **body},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    data: dict[str, str] = response.json()
    return data


async def _follow_link(broker: BrokerHarness, url: str, username: str) -> str:
    """Open the link, press the button, log in; return the callback path+query."""
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == BROKER_BASE
    page = await broker.client.get(parts.path)
    assert page.status_code == 200, page.text
    token = parts.path.removeprefix("/connect/")
    start = await broker.client.get("/oauth/authorize", params={"session": token})
    assert start.status_code == 302, start.text
    return await login_at_emulator(start.headers["location"], username=username)


async def test_link_connects_with_external_ref_and_returns(
    linked_broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    link = await _make_link(linked_broker)
    callback = await _follow_link(linked_broker, link["url"], "zoe")
    done = await linked_broker.client.get(callback)
    assert done.status_code == 302
    target = urlsplit(done.headers["location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{RETURN}/done"
    connection_id = parse_qs(target.query)["connection_id"][0]
    row = await db.fetchrow(
        "SELECT external_ref, status FROM connections WHERE id = $1::uuid", connection_id
    )
    assert row["external_ref"] == "user-42"
    reader = await linked_broker.api_key("connections:read")
    listed = await linked_broker.client.get(
        "/v1/connections", params={"external_ref": "user-42"}, headers=reader
    )
    assert [c["id"] for c in listed.json()] == [connection_id]


async def test_link_works_once(linked_broker: BrokerHarness, db: asyncpg.Connection) -> None:
    link = await _make_link(linked_broker)
    callback = await _follow_link(linked_broker, link["url"], "zoe")
    assert (await linked_broker.client.get(callback)).status_code == 302
    path = urlsplit(link["url"]).path
    again = await linked_broker.client.get(path)
    assert again.status_code == 400
    assert "already used" in again.text
    token = path.removeprefix("/connect/")
    start = await linked_broker.client.get("/oauth/authorize", params={"session": token})
    assert start.status_code == 400


async def test_unknown_link_is_refused(linked_broker: BrokerHarness) -> None:
    response = await linked_broker.client.get("/connect?session=nope")
    assert response.status_code == 400
    assert "unknown" in response.text


@pytest.mark.parametrize(
    "return_url",
    [
        "https://evil.example.com/",
        "https://app.example.com/workfront-evil",
        "https://app.example.com.evil.net/workfront",
        "javascript:alert(1)",
        "/relative",
        # Inputs urlsplit refuses (fullwidth slash, at-sign or colon in the
        # host under NFKC, an unclosed IPv6 bracket): refused, not a 500.
        "https://app.example.com\uff0fevil",
        "https://app.example.com\uff20evil.net/",
        "https://app.example.com\uff1a443/",
        "https://[app.example.com/",
    ],
)
async def test_return_url_must_be_allowed(
    linked_broker: BrokerHarness, db: asyncpg.Connection, return_url: str
) -> None:
    headers = await linked_broker.api_key("connections:write")
    response = await linked_broker.client.post(
        "/v1/connect-sessions",
        json={"external_ref": "x", "return_url": return_url},
        headers=headers,
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert await db.fetchval("SELECT count(*) FROM connect_sessions") == 0


async def test_no_allow_list_means_no_return_url(broker: BrokerHarness) -> None:
    headers = await broker.api_key("connections:write")
    response = await broker.client.post(
        "/v1/connect-sessions",
        json={"external_ref": "x", "return_url": RETURN},
        headers=headers,
    )
    assert response.status_code == 422


async def test_scope_is_connections_write(linked_broker: BrokerHarness) -> None:
    headers = await linked_broker.api_key("tokens:read", "connections:read")
    response = await linked_broker.client.post(
        "/v1/connect-sessions",
        json={"external_ref": "x", "return_url": RETURN},
        headers=headers,
    )
    assert response.status_code == 403


async def test_link_lives_for_the_configured_minutes(
    clean_db: None, emulator: Emulator, settings_for: Callable[..., Settings]
) -> None:
    settings = settings_for(allowed_return_urls=RETURN, connect_link_ttl_seconds=600)
    async with running_broker(settings, emulator) as broker:
        before = datetime.now(UTC)
        link = await _make_link(broker)
        expires_at = datetime.fromisoformat(link["expires_at"])
        assert 590 <= (expires_at - before).total_seconds() <= 610
        # 256 random bits in URL-safe base64, well over the 128 the link needs.
        token = urlsplit(link["url"]).path.removeprefix("/connect/")
        assert len(token) >= 43


async def test_one_connection_per_external_ref_and_workfront_user(
    linked_broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    ids = []
    for username in ("zoe", "zoe", "yann"):
        link = await _make_link(linked_broker)
        done = await linked_broker.client.get(
            await _follow_link(linked_broker, link["url"], username)
        )
        assert done.status_code == 302, done.text
        ids.append(parse_qs(urlsplit(done.headers["location"]).query)["connection_id"][0])
    # The same person connecting again renews their connection; another person
    # under the same reference gets their own.
    assert ids[0] == ids[1] != ids[2]
    reader = await linked_broker.api_key("connections:read")
    listed = await linked_broker.client.get(
        "/v1/connections", params={"external_ref": "user-42"}, headers=reader
    )
    assert sorted(c["id"] for c in listed.json()) == sorted({ids[0], ids[2]})
    assert await db.fetchval("SELECT count(*) FROM connections WHERE status = 'active'") == 2


async def _start_from_link(broker: BrokerHarness, token: str, username: str) -> httpx.AsyncClient:
    """A browser of its own that opened the link and logged in; returns it with
    its callback path+query stored on it."""
    browser = httpx.AsyncClient(transport=httpx.ASGITransport(app=broker.app), base_url=BROKER_BASE)
    start = await browser.get("/oauth/authorize", params={"session": token})
    assert start.status_code == 302, start.text
    browser.headers["x-test-callback"] = await login_at_emulator(
        start.headers["location"], username=username
    )
    return browser


async def test_two_callbacks_racing_on_one_link_make_one_grant(
    linked_broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    """The link is claimed before its code is exchanged: the loser is refused
    without reaching Workfront, so no orphaned grant is made there."""
    link = await _make_link(linked_broker)
    token = urlsplit(link["url"]).path.removeprefix("/connect/")
    browsers = [await _start_from_link(linked_broker, token, name) for name in ("ann", "ben")]
    exchanges_before = [r for r in await linked_broker.emulator.requests() if r.get("grant_type")]
    try:
        answers = await asyncio.gather(*(b.get(b.headers["x-test-callback"]) for b in browsers))
    finally:
        for browser in browsers:
            await browser.aclose()
    assert sorted(a.status_code for a in answers) == [302, 400]
    exchanges = [r for r in await linked_broker.emulator.requests() if r.get("grant_type")]
    codes = [
        r for r in exchanges[len(exchanges_before) :] if r["grant_type"] == "authorization_code"
    ]
    assert len(codes) == 1
    assert await db.fetchval("SELECT count(*) FROM connections") == 1


async def test_a_link_whose_sign_in_failed_at_workfront_works_again(
    linked_broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    link = await _make_link(linked_broker)
    callback = await _follow_link(linked_broker, link["url"], "zoe")
    await linked_broker.emulator.faults({"kind": "status", "status": 503})
    assert (await linked_broker.client.get(callback)).status_code == 502
    assert await db.fetchval("SELECT count(*) FROM connections") == 0
    # Released: the same link starts and finishes a sign-in.
    again = await _follow_link(linked_broker, link["url"], "zoe")
    assert (await linked_broker.client.get(again)).status_code == 302
    assert await db.fetchval("SELECT count(*) FROM connections") == 1
