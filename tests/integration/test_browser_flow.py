"""The browser flow: every way a callback can fail stores nothing."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest

from service.config import Settings
from service.web.routes.oauth import ATTEMPT_COOKIE
from tests.support import BROKER_BASE
from tests.support.broker import (
    BrokerHarness,
    extract_connection_id,
    login_at_emulator,
    running_broker,
    with_query,
)
from tests.support.emulator import Emulator


async def _counts(db: asyncpg.Connection) -> tuple[int, int]:
    connections = await db.fetchval("SELECT count(*) FROM connections")
    events = await db.fetchval("SELECT count(*) FROM events WHERE connection_id IS NOT NULL")
    return connections, events


async def _assert_refused(
    broker: BrokerHarness,
    db: asyncpg.Connection,
    path_query: str,
    *,
    status: int = 400,
    says: str,
    client: httpx.AsyncClient | None = None,
) -> None:
    before = await _counts(db)
    response = await (client or broker.client).get(path_query)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert says in response.text
    assert 'href="http://broker.test/connect"' in response.text
    assert await _counts(db) == before


async def test_connect_page_has_a_button(broker: BrokerHarness) -> None:
    response = await broker.client.get("/connect")
    assert response.status_code == 200
    assert "Connect Workfront" in response.text
    assert "/oauth/authorize" in response.text


async def test_authorize_redirects_with_state_and_cookie(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    response = await broker.client.get("/oauth/authorize")
    assert response.status_code == 302
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}" == broker.emulator.base_url
    assert location.path == "/integrations/oauth2/authorize"
    params = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert params["client_id"] == broker.settings.client_id
    assert params["redirect_uri"] == broker.settings.redirect_uri
    assert params["response_type"] == "code"
    assert len(params["state"]) == 92  # signed: time, nonce, link, instance, two tags
    assert "code_challenge" not in params
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=lax" in cookie
    # Starting a sign-in stores nothing: the state is signed, not remembered.
    assert await db.fetchval("SELECT count(*) FROM authorizations") == 0
    # Once its callback is accepted, the state is recorded as used, hashed.
    callback = await broker.authorize("state-user")
    state = parse_qs(urlsplit(callback).query)["state"][0]
    assert (await broker.client.get(callback)).status_code == 200
    stored = await db.fetchval("SELECT state_hash FROM authorizations")
    assert stored == hashlib.sha256(state.encode()).digest()


@pytest.mark.parametrize("style", ["basic_json", "form"])
async def test_full_flow_in_both_auth_styles(
    style: str,
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
) -> None:
    async with running_broker(settings_for(token_auth=style), emulator) as broker:
        connection_id = await broker.connect("bob")
        headers = await broker.api_key("tokens:read")
        forced = await broker.client.post(
            f"/v1/connections/{connection_id}/refresh", headers=headers
        )
        assert forced.status_code == 200, forced.text
    requests = await emulator.requests()
    assert [r["style"] for r in requests] == [style, style]
    assert [r["grant_type"] for r in requests] == ["authorization_code", "refresh_token"]
    assert all(r["status"] == 200 for r in requests)
    row = await db.fetchrow("SELECT * FROM connections WHERE id = $1", connection_id)
    assert row["status"] == "active"
    assert row["token_version"] == 2


async def test_reauthorizing_updates_the_same_connection(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    first = await broker.connect("carol")
    before = await db.fetchrow("SELECT * FROM connections WHERE id = $1", first)
    second = await broker.connect("carol")
    assert first == second
    after = await db.fetchrow("SELECT * FROM connections WHERE id = $1", first)
    assert await db.fetchval("SELECT count(*) FROM connections") == 1
    assert after["refresh_token_enc"] != before["refresh_token_enc"]
    other = await broker.connect("dave")
    assert other != first


async def test_pkce_sends_challenge_and_verifier(
    clean_db: None, emulator: Emulator, settings_for: Callable[..., Settings]
) -> None:
    async with running_broker(settings_for(pkce=True), emulator) as broker:
        start = await broker.client.get("/oauth/authorize")
        params = parse_qs(urlsplit(start.headers["location"]).query)
        assert params["code_challenge_method"] == ["S256"]
        callback = await login_at_emulator(start.headers["location"], username="erin")
        response = await broker.client.get(callback)
        assert response.status_code == 200, response.text


async def test_missing_state_is_refused(broker: BrokerHarness, db: asyncpg.Connection) -> None:
    callback = await broker.authorize("frank")
    await _assert_refused(broker, db, with_query(callback, state=None), says="no state")


async def test_unknown_state_is_refused(broker: BrokerHarness, db: asyncpg.Connection) -> None:
    callback = await broker.authorize("frank")
    await _assert_refused(
        broker, db, with_query(callback, state="forged-" + "a" * 40), says="unknown"
    )


async def test_expired_state_is_refused(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
) -> None:
    async with running_broker(settings_for(signin_ttl_seconds=1), emulator) as broker:
        callback = await broker.authorize("frank")
        await asyncio.sleep(1.1)
        await _assert_refused(broker, db, callback, says="expired")


async def test_reused_state_is_refused(broker: BrokerHarness, db: asyncpg.Connection) -> None:
    callback = await broker.authorize("frank")
    assert (await broker.client.get(callback)).status_code == 200
    await _assert_refused(broker, db, callback, says="already used")


async def test_state_from_another_browser_is_refused(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    callback = await broker.authorize("frank")
    transport = httpx.ASGITransport(app=broker.app)
    async with httpx.AsyncClient(transport=transport, base_url=BROKER_BASE) as other_browser:
        await _assert_refused(broker, db, callback, says="another browser", client=other_browser)
    # The rightful browser can still finish: a stranger's attempt did not burn the state.
    assert (await broker.client.get(callback)).status_code == 200


async def test_two_sign_ins_in_one_browser_both_finish(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    """Two tabs: the second /oauth/authorize must not orphan the first."""
    first = await broker.authorize("tab-one")
    second = await broker.authorize("tab-two")
    assert (await broker.client.get(second)).status_code == 200
    assert (await broker.client.get(first)).status_code == 200
    assert await db.fetchval("SELECT count(*) FROM connections") == 2


async def test_a_planted_binding_cookie_is_never_adopted(broker: BrokerHarness) -> None:
    """Session fixation: a binding value the broker did not issue (planted by
    someone who wants to share a victim's binding) is replaced, not echoed."""
    planted = "P" * 43  # the shape of a real one
    broker.client.cookies.set(ATTEMPT_COOKIE, planted, path="/oauth")
    start = await broker.client.get("/oauth/authorize")
    assert start.status_code == 302
    issued = start.cookies[ATTEMPT_COOKIE]
    assert issued != planted
    # One the broker issued is kept: a second tab shares it.
    again = await broker.client.get("/oauth/authorize")
    assert ATTEMPT_COOKIE not in again.cookies or again.cookies[ATTEMPT_COOKIE] == issued


async def test_a_refused_tab_does_not_spoil_another_in_the_same_browser(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    first = await broker.authorize("tab-one")
    second = await broker.authorize("tab-two")
    await _assert_refused(
        broker, db, with_query(first, domain="evil"), says="different Workfront instance"
    )
    assert (await broker.client.get(second)).status_code == 200


@pytest.mark.parametrize(("domain", "lane"), [("evil", "my"), ("acme", "preview"), (None, None)])
async def test_wrong_domain_or_lane_is_refused(
    broker: BrokerHarness, db: asyncpg.Connection, domain: str | None, lane: str | None
) -> None:
    callback = await broker.authorize("frank")
    await _assert_refused(
        broker,
        db,
        with_query(callback, domain=domain, lane=lane),
        says="different Workfront instance",
    )
    assert await broker.emulator.requests() == []  # the code went nowhere


async def test_access_denied_is_refused(broker: BrokerHarness, db: asyncpg.Connection) -> None:
    callback = await broker.authorize("frank", decision="deny")
    assert "error=access_denied" in callback
    await _assert_refused(broker, db, callback, says="declined")


async def test_reused_code_is_refused(broker: BrokerHarness, db: asyncpg.Connection) -> None:
    callback = await broker.authorize("frank")
    assert (await broker.client.get(callback)).status_code == 200
    # A second attempt in the same browser carrying the already-exchanged code.
    second = await broker.authorize("frank")
    code = parse_qs(urlsplit(callback).query)["code"][0]
    await _assert_refused(
        broker, db, with_query(second, code=code), says="refused the authorization code"
    )


async def test_expired_code_is_refused(broker: BrokerHarness, db: asyncpg.Connection) -> None:
    await broker.emulator.configure(code_ttl_seconds=0.05)
    callback = await broker.authorize("frank")
    await asyncio.sleep(0.1)
    await _assert_refused(broker, db, callback, says="expired")


@pytest.mark.parametrize(
    "fault", [{"kind": "status", "status": 503}, {"kind": "status", "status": 429}]
)
async def test_token_endpoint_failing_is_502(
    broker: BrokerHarness, db: asyncpg.Connection, fault: dict[str, object]
) -> None:
    callback = await broker.authorize("frank")
    await broker.emulator.faults(fault)
    await _assert_refused(broker, db, callback, status=502, says="Nothing was stored")


async def test_token_endpoint_unreachable_is_502(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
) -> None:
    async with running_broker(settings_for(), emulator) as broker:
        callback = await broker.authorize("frank")
    # Same browser session, but the instance URL now points at a closed port.
    dead = settings_for(workfront_url="http://127.0.0.1:9")
    async with running_broker(dead, emulator) as broken:
        broken.client.cookies = broker.client.cookies
        await _assert_refused(broken, db, callback, status=502, says="Nothing was stored")


async def test_success_page_names_the_connection(broker: BrokerHarness) -> None:
    callback = await broker.authorize("gina")
    response = await broker.client.get(callback)
    assert response.status_code == 200
    assert response.headers["referrer-policy"] == "no-referrer"
    assert extract_connection_id(response.text)
