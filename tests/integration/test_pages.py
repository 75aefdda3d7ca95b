"""Every page a person sees: strict security headers, no script or inline style,
plain words, and a "Try again" that goes back to the right start."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from service.config import Settings
from tests.support import ADMIN_KEY, BROKER_BASE
from tests.support.broker import BrokerHarness, login_at_emulator, running_broker, with_query
from tests.support.emulator import Emulator

RETURN = "https://app.example.com/workfront"
_CSP_PARTS = (
    "default-src 'none'",
    "style-src 'self'",
    "img-src 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
)


def assert_safe_page(response: httpx.Response, status: int) -> None:
    """The headers every broker page carries, and nothing that could run or restyle it."""
    assert response.status_code == status, response.text
    headers = response.headers
    csp = headers["content-security-policy"]
    for part in _CSP_PARTS:
        assert part in csp, csp
    assert re.search(r"form-action 'self' http://127\.0\.0\.1:\d+", csp), csp
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-store"
    if status == 302:
        return
    assert headers["content-type"].startswith("text/html")
    text = response.text
    assert '<html lang="en">' in text
    assert re.search(r"<h1[ >]", text)
    assert "<title>" in text
    lowered = text.lower()
    assert "<script" not in lowered
    assert "<style" not in lowered
    assert "style=" not in lowered
    assert " on" + "click=" not in lowered
    # Only our own stylesheet; no third-party asset anywhere.
    assert f'href="{BROKER_BASE}/static/broker.css"' in text
    for url in re.findall(r'(?:src|href)="([^"]+)"', text):
        host = urlsplit(url).netloc
        assert host in ("", "broker.test", "app.example.com") or host.startswith("127.0.0.1"), url


@pytest.fixture
async def site(
    clean_db: None, emulator: Emulator, settings_for: Callable[..., Settings]
) -> AsyncIterator[BrokerHarness]:
    settings = settings_for(allowed_return_urls=RETURN, status_page_enabled=True)
    async with running_broker(settings, emulator) as harness:
        yield harness


async def _link(broker: BrokerHarness) -> str:
    """A fresh connect link's token."""
    headers = await broker.api_key("connections:write")
    made = await broker.client.post(
        "/v1/connect-sessions",
        json={"external_ref": "user-7", "return_url": f"{RETURN}/done"},
        headers=headers,
    )
    assert made.status_code == 201, made.text
    url: str = made.json()["url"]
    return urlsplit(url).path.removeprefix("/connect/")


def _retry_href(response: httpx.Response) -> str | None:
    match = re.search(r'<a class="button[^"]*" id="retry" href="([^"]+)"', response.text)
    return match.group(1).replace("&amp;", "&") if match else None


async def test_static_stylesheet_is_served_and_not_in_the_api_document(
    site: BrokerHarness,
) -> None:
    css = await site.client.get("/static/broker.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert css.headers["x-content-type-options"] == "nosniff"
    assert ":focus-visible" in css.text
    icon = await site.client.get("/static/favicon.svg")
    assert icon.status_code == 200
    missing = await site.client.get("/static/nope.css")
    assert missing.status_code == 404
    schema = (await site.client.get("/openapi.json")).json()
    assert not any(path.startswith("/static") for path in schema["paths"])


async def test_every_page_carries_the_headers_and_no_script(
    site: BrokerHarness, db: asyncpg.Connection
) -> None:
    client = site.client
    emulator = site.emulator
    seen: list[str] = []

    async def check(path: str, status: int, says: str = "", **kwargs: object) -> httpx.Response:
        response = await client.get(path, **kwargs)  # type: ignore[arg-type]
        assert_safe_page(response, status)
        assert says in response.text
        route = path.split("?")[0]
        seen.append("/connect/{token}" if route.startswith("/connect/") else route)
        return response

    await check("/connect", 200, "Connect Workfront")
    token = await _link(site)
    await check(f"/connect/{token}", 200, "works once")
    await check(f"/connect?session={token}", 200, "works once")  # the older form
    await check("/connect/nope", 400, "unknown")
    await check("/connect?session=nope", 400, "unknown")
    await check("/oauth/authorize", 302)
    await check(f"/oauth/authorize?session={token}", 302)
    await check("/oauth/authorize?session=nope", 400, "unknown")

    # The callback, refused in every way a person can meet.
    # (Each refusal drops the attempt cookie, so each case starts a new attempt.)
    callback = await site.authorize("page-user")
    await check(with_query(callback, state=None), 400, "no state")
    await check(with_query(callback, state="x" * 43), 400, "unknown")
    await check("/oauth/callback?state=" + "y" * 3000, 400, "malformed")
    callback = await site.authorize("page-user")
    await check(with_query(callback, domain="evil"), 400, "different Workfront instance")
    callback = await site.authorize("page-user")
    await check(with_query(callback, code=None), 400, "without an authorization code")
    callback = await site.authorize("page-user", decision="deny")
    await check(callback, 400, "declined")
    await check(callback, 400, "already used")
    callback = await site.authorize("page-user")
    await check(with_query(callback, code=None, error="server_error"), 400, "reported an error")
    await emulator.configure(code_ttl_seconds=0)
    callback = await site.authorize("page-user")
    await check(callback, 400, "refused the authorization code")
    await emulator.configure(code_ttl_seconds=120)
    callback = await site.authorize("page-user")
    await emulator.faults({"kind": "status", "status": 503})
    await check(callback, 502, "could not be reached")
    callback = await site.authorize("page-user")
    await emulator.configure(client_secret="not-the-broker-s-secret")
    try:
        await check(callback, 502, "app credentials")
    finally:
        secret = site.settings.instances["default"].client_secret.get_secret_value()
        await emulator.configure(client_secret=secret)
    callback = await site.authorize("page-user")
    transport = httpx.ASGITransport(app=site.app)
    async with httpx.AsyncClient(transport=transport, base_url=BROKER_BASE) as other:
        response = await other.get(callback)
        assert_safe_page(response, 400)
        assert "another browser" in response.text
    done = await check(callback, 200, "Workfront is connected")
    assert 'id="connection-id"' in done.text

    # Through a connect link: on to the app, then the link is spent.
    start = await client.get(f"/oauth/authorize?session={token}")
    callback = await login_at_emulator(start.headers["location"], username="link-user")
    await check(callback, 302)
    await check(f"/connect?session={token}", 400, "already used")
    expired = await _link(site)
    await db.execute("UPDATE connect_sessions SET expires_at = now() - interval '1 second'")
    await check(f"/connect?session={expired}", 400, "expired")

    # The operator page, refused and shown.
    await check("/status", 401, "admin scope")
    reader = await site.api_key("connections:read")
    await check("/status", 403, "lacks the admin scope", headers=reader)
    await check("/status", 200, "Broker status", headers=site.admin)
    assert set(seen) == {
        "/connect",
        "/connect/{token}",
        "/oauth/authorize",
        "/oauth/callback",
        "/status",
    }


async def test_an_expired_sign_in_gets_a_safe_page(
    clean_db: None, emulator: Emulator, settings_for: Callable[..., Settings]
) -> None:
    async with running_broker(settings_for(signin_ttl_seconds=1), emulator) as site:
        callback = await site.authorize("slow-user")
        await asyncio.sleep(1.1)
        response = await site.client.get(callback)
        assert_safe_page(response, 400)
        assert "expired" in response.text


async def test_retry_goes_back_to_the_live_connect_link(site: BrokerHarness) -> None:
    token = await _link(site)
    start = await site.client.get(f"/oauth/authorize?session={token}")
    callback = await login_at_emulator(
        start.headers["location"], username="deny-user", decision="deny"
    )
    denied = await site.client.get(callback)
    assert denied.status_code == 400
    assert _retry_href(denied) == f"{BROKER_BASE}/connect/{token}"
    assert f'id="back" href="{RETURN}/done"' in denied.text
    # The link still works: denying did not spend it.
    again = await site.client.get(f"/connect?session={token}")
    assert again.status_code == 200


async def test_a_spent_link_offers_no_retry_but_the_way_back(
    site: BrokerHarness, db: asyncpg.Connection
) -> None:
    token = await _link(site)
    start = await site.client.get(f"/oauth/authorize?session={token}")
    callback = await login_at_emulator(start.headers["location"], username="slow-user")
    # The link expires while the person is at Workfront.
    await db.execute("UPDATE connect_sessions SET expires_at = now() - interval '1 second'")
    refused = await site.client.get(callback)
    assert refused.status_code == 400
    assert "expired" in refused.text
    assert _retry_href(refused) is None
    assert "ask it for a new connect link" in refused.text
    assert f'id="back" href="{RETURN}/done"' in refused.text
    # The code was never exchanged: a spent link makes no grant at Workfront.
    assert await site.emulator.requests() == []
    assert await db.fetchval("SELECT count(*) FROM connections") == 0


async def test_an_unknown_link_page_has_no_buttons(site: BrokerHarness) -> None:
    response = await site.client.get("/connect?session=" + "z" * 43)
    assert response.status_code == 400
    assert _retry_href(response) is None
    assert 'id="back"' not in response.text
    assert "ask it for a new connect link" in response.text


async def test_operator_retry_goes_to_the_connect_page(site: BrokerHarness) -> None:
    callback = await site.authorize("deny-user", decision="deny")
    denied = await site.client.get(callback)
    assert _retry_href(denied) == f"{BROKER_BASE}/connect"


async def test_connect_page_can_be_turned_off(
    clean_db: None, emulator: Emulator, settings_for: Callable[..., Settings]
) -> None:
    settings = settings_for(allowed_return_urls=RETURN, connect_page_enabled=False)
    async with running_broker(settings, emulator) as broker:
        for path in ("/connect", "/oauth/authorize"):
            response = await broker.client.get(path)
            assert_safe_page(response, 404)
            assert "connect link" in response.text
        # Connect links still work, end to end.
        token = await _link(broker)
        page = await broker.client.get(f"/connect?session={token}")
        assert_safe_page(page, 200)
        start = await broker.client.get(f"/oauth/authorize?session={token}")
        assert start.status_code == 302
        callback = await login_at_emulator(
            start.headers["location"], username="off-user", decision="deny"
        )
        denied = await broker.client.get(callback)
        assert _retry_href(denied) == f"{BROKER_BASE}/connect/{token}"
        # An operator flow's error has nowhere to send the person back to.
        stray = await broker.client.get("/oauth/callback?state=" + "s" * 43)
        assert_safe_page(stray, 400)
        assert _retry_href(stray) is None
        assert "ask it for a new connect link" in stray.text


async def test_status_page_is_off_by_default(broker: BrokerHarness) -> None:
    response = await broker.client.get("/status", headers=broker.admin)
    assert_safe_page(response, 404)


async def test_status_page_takes_the_admin_key_as_basic_password(
    site: BrokerHarness, db: asyncpg.Connection
) -> None:
    first = await site.connect("status-a")
    await site.connect("status-b")
    await db.execute(
        "UPDATE connections SET status = 'needs_reauth' WHERE id != $1::uuid", str(first)
    )
    refused = await site.client.get("/status")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Basic ")
    wrong = base64.b64encode(b"ops:not-the-key").decode()
    assert (
        await site.client.get("/status", headers={"Authorization": f"Basic {wrong}"})
    ).status_code == 401
    basic = base64.b64encode(f"ops:{ADMIN_KEY}".encode()).decode()
    shown = await site.client.get("/status", headers={"Authorization": f"Basic {basic}"})
    assert_safe_page(shown, 200)
    counts = dict(
        re.findall(r'<th scope="row">([^<]+)</th><td class="number">(\d+)</td>', shown.text)
    )
    assert counts["Active"] == "1"
    assert counts["Needs re-authorization"] == "1"
    assert counts["All connections"] == "2"
    assert str(first) in shown.text
    # Never a token: nothing on the page decrypts to one, and no sessionID-shaped value.
    sessions = await site.api_key("tokens:read")
    token = await site.client.get(f"/v1/connections/{first}/token", headers=sessions)
    assert token.json()["session_id"] not in shown.text
    assert ADMIN_KEY not in shown.text
