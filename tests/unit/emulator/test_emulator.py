"""Tests for the in-memory Workfront emulator (service/emulator/)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from service.emulator import (
    ConnectionDropped,
    EmulatorSettings,
    create_emulator_app,
    run_emulator,
)

REDIRECT = "https://broker.example/oauth/callback"
TOKEN = "/integrations/oauth2/api/v1/token"
AUTHORIZE = "/integrations/oauth2/authorize"
CLIENT_ID, SECRET = "demo-client", "demo-secret"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_emulator_app(EmulatorSettings(redirect_uri=REDIRECT))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://emulator") as c:
        yield c


def _h32(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _basic(client_id: str = CLIENT_ID, secret: str = SECRET) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


async def _authorize(
    c: httpx.AsyncClient, username: str = "alice", **extra: str
) -> dict[str, list[str]]:
    """Post the login form with Allow; return the callback's query parameters."""
    form = {
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "state": "st-1",
        "username": username,
        "password": "pw",
        "decision": "allow",
        **extra,
    }
    r = await c.post(AUTHORIZE, data=form)
    assert r.status_code == 302, r.text
    location = r.headers["location"]
    assert location.startswith(REDIRECT + "?")
    return parse_qs(urlsplit(location).query)


async def _token(c: httpx.AsyncClient, style: str, **fields: str) -> httpx.Response:
    if style == "basic_json":
        return await c.post(TOKEN, json=fields, headers=_basic())
    data = {"client_id": CLIENT_ID, "client_secret": SECRET, **fields}
    return await c.post(TOKEN, data=data)


async def _exchange(c: httpx.AsyncClient, style: str = "basic_json", **extra: str) -> Any:
    code = (await _authorize(c))["code"][0]
    fields = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    r = await _token(c, style, **fields, **extra)
    assert r.status_code == 200, r.text
    return r.json()


async def _refresh(c: httpx.AsyncClient, token: str, style: str = "basic_json") -> httpx.Response:
    return await _token(c, style, grant_type="refresh_token", refresh_token=token)


async def _session(c: httpx.AsyncClient, sid: str, version: str = "v21.0") -> httpx.Response:
    return await c.get(f"/attask/api/{version}/session", headers={"sessionID": sid})


async def _stats(c: httpx.AsyncClient) -> dict[str, int]:
    return (await c.get("/__emulator/stats")).json()  # type: ignore[no-any-return]


async def _settings(c: httpx.AsyncClient, **changes: Any) -> None:
    r = await c.patch("/__emulator/settings", json=changes)
    assert r.status_code == 200, r.text


# -- authorize ------------------------------------------------------------------------------
async def test_authorize_page_shows_login_form_with_hidden_fields(
    client: httpx.AsyncClient,
) -> None:
    params = {
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "state": 'x"<y',
    }
    r = await client.get(AUTHORIZE, params=params)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    page = r.text
    assert 'name="username"' in page
    assert 'name="password"' in page
    assert 'name="decision" value="allow"' in page
    assert 'name="decision" value="deny"' in page
    assert 'name="state" value="x&quot;&lt;y"' in page  # escaped, carried to the POST
    assert f'name="redirect_uri" value="{REDIRECT}"' in page


@pytest.mark.parametrize(
    "override",
    [
        {"client_id": "someone-else"},
        {"response_type": "token"},
        {"redirect_uri": "https://evil.example/cb"},
        {"code_challenge": "abc", "code_challenge_method": "plain"},
    ],
)
async def test_authorize_refuses_bad_requests_without_redirecting(
    client: httpx.AsyncClient, override: dict[str, str]
) -> None:
    params = {"client_id": CLIENT_ID, "redirect_uri": REDIRECT, "response_type": "code"}
    r = await client.get(AUTHORIZE, params={**params, **override})
    assert r.status_code == 400
    assert "location" not in r.headers
    assert r.headers["content-type"].startswith("text/html")
    form = {**params, **override, "username": "a", "password": "b", "decision": "allow"}
    r = await client.post(AUTHORIZE, data=form)
    assert r.status_code == 400
    assert "location" not in r.headers


async def test_empty_credentials_show_the_form_again(client: httpx.AsyncClient) -> None:
    form = {"client_id": CLIENT_ID, "redirect_uri": REDIRECT, "response_type": "code"}
    r = await client.post(AUTHORIZE, data={**form, "username": "", "password": "x"})
    assert r.status_code == 400
    assert 'name="username"' in r.text
    assert (await _stats(client))["codes_issued"] == 0


async def test_deny_redirects_with_access_denied(client: httpx.AsyncClient) -> None:
    form = {
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "state": "s1",
        "decision": "deny",
    }
    r = await client.post(AUTHORIZE, data=form)
    assert r.status_code == 302
    assert parse_qs(urlsplit(r.headers["location"]).query) == {
        "error": ["access_denied"],
        "state": ["s1"],
    }


async def test_callback_carries_domain_lane_and_omits_absent_state(
    client: httpx.AsyncClient,
) -> None:
    await _settings(client, domain="acme", lane="preview")
    form = {
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "username": "bob",
        "password": "pw",
        "decision": "allow",
    }
    r = await client.post(AUTHORIZE, data=form)
    query = parse_qs(urlsplit(r.headers["location"]).query)
    assert set(query) == {"code", "domain", "lane"}
    assert query["domain"] == ["acme"]
    assert query["lane"] == ["preview"]


# -- token endpoint ---------------------------------------------------------------------------
@pytest.mark.parametrize("style", ["basic_json", "form"])
async def test_full_flow_in_both_styles(client: httpx.AsyncClient, style: str) -> None:
    callback = await _authorize(client, username="carol")
    assert callback["state"] == ["st-1"]
    assert callback["domain"] == ["emulator"]
    assert callback["lane"] == ["my"]
    fields = {"grant_type": "authorization_code", "code": callback["code"][0]}
    r = await _token(client, style, **fields, redirect_uri=REDIRECT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"token_type", "access_token", "refresh_token", "expires_in", "wid"}
    assert body["token_type"] == "sessionID"
    assert body["expires_in"] == 0
    r = await _session(client, body["access_token"])
    assert r.status_code == 200
    assert r.json() == {
        "data": {
            "userID": _h32("user:carol"),
            "customerID": _h32("customer:emulator"),
            "userName": "carol",
        }
    }
    assert body["access_token"] not in r.text  # the token is never echoed
    # The refresh keeps the grant's wid.
    r = await _refresh(client, body["refresh_token"], style)
    assert r.status_code == 200
    assert r.json()["wid"] == body["wid"]
    log = (await client.get("/__emulator/requests")).json()["requests"]
    assert [e["style"] for e in log] == [style, style]
    assert [e["grant_type"] for e in log] == ["authorization_code", "refresh_token"]
    assert all(e["client_ok"] and e["outcome"] == "ok" for e in log)


@pytest.mark.parametrize(
    ("headers", "data", "json_body"),
    [
        (_basic(secret="wrong"), None, {"grant_type": "authorization_code", "code": "x"}),
        (_basic(client_id="other"), None, {"grant_type": "refresh_token", "refresh_token": "x"}),
        ({}, None, {"grant_type": "authorization_code", "code": "x"}),  # no Basic header
        (
            {},
            None,  # a secret in a JSON body is not one of the documented styles
            {"grant_type": "refresh_token", "client_id": CLIENT_ID, "client_secret": SECRET},
        ),
        ({}, {"grant_type": "authorization_code", "client_id": CLIENT_ID}, None),
        (
            {},
            {"grant_type": "authorization_code", "client_id": CLIENT_ID, "client_secret": "no"},
            None,
        ),
        ({"Authorization": "Basic !!!"}, None, {"grant_type": "authorization_code"}),
    ],
)
async def test_bad_client_credentials_are_401(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    data: dict[str, str] | None,
    json_body: dict[str, str] | None,
) -> None:
    r = await client.post(TOKEN, headers=headers, data=data, json=json_body)
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_client"
    entry = (await client.get("/__emulator/requests")).json()["requests"][-1]
    assert entry["client_ok"] is False
    assert entry["outcome"] == "invalid_client"


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b'["a"]', "application/json"),
        (b'{"grant_type": 1}', "application/json"),
        (b"grant_type=x", "text/plain"),
        (b"grant_type=a&grant_type=b", "application/x-www-form-urlencoded"),
    ],
)
async def test_malformed_token_body_is_invalid_request(
    client: httpx.AsyncClient, content: bytes, content_type: str
) -> None:
    headers = {**_basic(), "Content-Type": content_type}
    r = await client.post(TOKEN, content=content, headers=headers)
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_request"


async def test_unsupported_grant_type(client: httpx.AsyncClient) -> None:
    r = await _token(client, "basic_json", grant_type="password")
    assert r.status_code == 400
    assert r.json()["error"] == "unsupported_grant_type"


async def test_code_is_single_use_and_reuse_revokes_what_it_issued(
    client: httpx.AsyncClient,
) -> None:
    code = (await _authorize(client))["code"][0]
    fields = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    first = await _token(client, "basic_json", **fields)
    assert first.status_code == 200
    second = await _token(client, "form", **fields)
    assert second.status_code == 400
    assert second.json()["error"] == "invalid_grant"
    tokens = first.json()
    assert (await _session(client, tokens["access_token"])).status_code == 401
    assert (await _refresh(client, tokens["refresh_token"])).status_code == 400
    assert (await _stats(client))["code_reuse"] == 1


async def test_code_expires(client: httpx.AsyncClient) -> None:
    await _settings(client, code_ttl_seconds=0.05)
    code = (await _authorize(client))["code"][0]
    await asyncio.sleep(0.1)
    fields = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    r = await _token(client, "basic_json", **fields)
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("redirect_uri", ["https://broker.example/other", None])
async def test_token_redirect_uri_must_match(
    client: httpx.AsyncClient, redirect_uri: str | None
) -> None:
    code = (await _authorize(client))["code"][0]
    fields = {"grant_type": "authorization_code", "code": code}
    if redirect_uri is not None:
        fields["redirect_uri"] = redirect_uri
    r = await _token(client, "form", **fields)
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"


async def test_unknown_code(client: httpx.AsyncClient) -> None:
    r = await _token(
        client, "basic_json", grant_type="authorization_code", code="nope", redirect_uri=REDIRECT
    )
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"


async def test_pkce_s256(client: httpx.AsyncClient) -> None:
    verifier = "v" * 50
    pkce = {"code_challenge": _s256(verifier), "code_challenge_method": "S256"}
    base = {"grant_type": "authorization_code", "redirect_uri": REDIRECT}
    for bad in ({"code_verifier": "w" * 50}, {}):
        code = (await _authorize(client, **pkce))["code"][0]
        r = await _token(client, "basic_json", **base, code=code, **bad)
        assert r.status_code == 400
        assert r.json()["error"] == "invalid_grant"
    code = (await _authorize(client, **pkce))["code"][0]
    r = await _token(client, "form", **base, code=code, code_verifier=verifier)
    assert r.status_code == 200
    # A verifier for a code that had no challenge is refused as well.
    code = (await _authorize(client))["code"][0]
    r = await _token(client, "form", **base, code=code, code_verifier=verifier)
    assert r.status_code == 400


# -- refresh ----------------------------------------------------------------------------------
async def test_rotation_rejects_old_token_and_keeps_old_session(
    client: httpx.AsyncClient,
) -> None:
    await _settings(client, reuse_detection=False)
    first = await _exchange(client)
    r = await _refresh(client, first["refresh_token"])
    assert r.status_code == 200
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    # The previous sessionID stays valid until its own expiry.
    assert (await _session(client, first["access_token"])).status_code == 200
    r = await _refresh(client, first["refresh_token"])
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"
    # Without reuse detection the family survives.
    assert (await _refresh(client, second["refresh_token"])).status_code == 200
    stats = await _stats(client)
    assert stats["refreshes_ok"] == 2
    assert stats["refresh_failures"] == 1
    assert stats["reuse_detected"] == 0


async def test_reuse_detection_revokes_the_whole_family(client: httpx.AsyncClient) -> None:
    first = await _exchange(client)
    other = await _exchange(client)  # another grant: must survive
    second = (await _refresh(client, first["refresh_token"])).json()
    r = await _refresh(client, first["refresh_token"])
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"
    assert (await _refresh(client, second["refresh_token"])).status_code == 400
    for sid in (first["access_token"], second["access_token"]):
        assert (await _session(client, sid)).status_code == 401
    assert (await _session(client, other["access_token"])).status_code == 200
    assert (await _refresh(client, other["refresh_token"])).status_code == 200
    assert (await _stats(client))["reuse_detected"] == 1
    log = (await client.get("/__emulator/requests")).json()["requests"]
    assert [e["outcome"] for e in log][-3:] == ["reuse_detected", "invalid_grant", "ok"]


async def test_concurrent_refreshes_with_one_token_trip_reuse_detection(
    client: httpx.AsyncClient,
) -> None:
    tokens = await _exchange(client)
    await _settings(client, latency_ms=20)
    results = await asyncio.gather(
        _refresh(client, tokens["refresh_token"]), _refresh(client, tokens["refresh_token"])
    )
    assert sorted(r.status_code for r in results) == [200, 400]
    winner = next(r for r in results if r.status_code == 200).json()
    assert (await _refresh(client, winner["refresh_token"])).status_code == 400
    reuse = (await client.get("/__emulator/refresh-token-reuse")).json()
    assert reuse == {"presented_twice": [tokens["refresh_token"]]}


async def test_rotation_off_repeats_or_omits_the_token(client: httpx.AsyncClient) -> None:
    await _settings(client, rotate_refresh_tokens=False)
    tokens = await _exchange(client, "form")
    r = await _refresh(client, tokens["refresh_token"], "form")
    assert r.status_code == 200
    assert r.json()["refresh_token"] == tokens["refresh_token"]
    await _settings(client, omit_refresh_token=True)
    r = await _refresh(client, tokens["refresh_token"], "form")
    assert r.status_code == 200
    assert "refresh_token" not in r.json()
    assert (await _session(client, r.json()["access_token"])).status_code == 200
    assert (await _stats(client))["reuse_detected"] == 0


async def test_expires_in_setting_is_returned(client: httpx.AsyncClient) -> None:
    await _settings(client, expires_in=3600)
    assert (await _exchange(client))["expires_in"] == 3600


# -- API endpoints ----------------------------------------------------------------------------
async def test_proj_search_logout_and_versions(client: httpx.AsyncClient) -> None:
    sid = (await _exchange(client))["access_token"]
    r = await client.get("/attask/api/v22.0/proj/search", headers={"sessionID": sid})
    assert r.status_code == 200
    projects = r.json()["data"]
    assert len(projects) == 3
    assert all(p["objCode"] == "PROJ" and p["status"] == "CUR" for p in projects)
    assert (await _session(client, sid, "v15.0")).status_code == 200
    r = await client.get("/attask/api/v21.0/logout", headers={"sessionID": sid})
    assert r.json() == {"data": {"success": True}}
    for path in ("session", "proj/search", "logout"):
        r = await client.get(f"/attask/api/v21.0/{path}", headers={"sessionID": sid})
        assert r.status_code == 401
        assert r.json()["error"]["class"] == "com.attask.common.AuthenticationException"
    r = await client.get("/attask/api/v21.0/proj/search")  # no header at all
    assert r.status_code == 401
    assert r.json()["error"]["message"] == "You are not currently logged in."


async def test_session_ttl(client: httpx.AsyncClient) -> None:
    await _settings(client, session_ttl_seconds=0.05)
    tokens = await _exchange(client)
    await asyncio.sleep(0.1)
    headers = {"sessionID": tokens["access_token"]}
    assert (await client.get("/attask/api/v21.0/proj/search", headers=headers)).status_code == 401
    # The refresh token outlives the session.
    assert (await _refresh(client, tokens["refresh_token"])).status_code == 200


async def test_expire_sessions_keeps_refresh_tokens(client: httpx.AsyncClient) -> None:
    tokens = await _exchange(client)
    assert (await _stats(client))["sessions_live"] == 1
    r = await client.post("/__emulator/expire-sessions")
    assert r.json() == {"expired": 1}
    assert (await _stats(client))["sessions_live"] == 0
    assert (await _session(client, tokens["access_token"])).status_code == 401
    fresh = await _refresh(client, tokens["refresh_token"])
    assert (await _session(client, fresh.json()["access_token"])).status_code == 200


async def test_admin_revoke_kills_every_grant_of_a_user(client: httpx.AsyncClient) -> None:
    a1, a2 = await _exchange(client), await _exchange(client)
    bob_code = (await _authorize(client, username="bob"))["code"][0]
    fields = {"grant_type": "authorization_code", "code": bob_code, "redirect_uri": REDIRECT}
    bob = (await _token(client, "form", **fields)).json()
    r = await client.post("/__emulator/revoke", json={"user_id": _h32("user:alice")})
    assert r.json() == {"revoked_grants": 2}
    for tokens in (a1, a2):
        assert (await _session(client, tokens["access_token"])).status_code == 401
        assert (await _refresh(client, tokens["refresh_token"])).status_code == 400
    assert (await _refresh(client, bob["refresh_token"])).status_code == 200
    assert (await client.post("/__emulator/revoke", json={})).status_code == 422


# -- faults, latency, log ---------------------------------------------------------------------
async def test_fault_queue_is_fifo_one_per_request(client: httpx.AsyncClient) -> None:
    await _settings(client, hang_seconds=0.05)
    tokens = await _exchange(client)
    faults = [
        {"kind": "status", "status": 500},
        {"kind": "status", "status": 429, "retry_after": 2},
        {"kind": "timeout"},
    ]
    r = await client.post("/__emulator/faults", json={"faults": faults})
    assert r.json() == {"queued": 3}
    # Faults apply to the token endpoint only.
    assert (await _session(client, tokens["access_token"])).status_code == 200
    r = await _refresh(client, tokens["refresh_token"])
    assert r.status_code == 500
    assert r.json()["error"] == "fault"
    r = await _refresh(client, tokens["refresh_token"])
    assert r.status_code == 429
    assert r.headers["retry-after"] == "2"
    assert (await _stats(client))["faults_queued"] == 1
    started = time.monotonic()
    r = await _refresh(client, tokens["refresh_token"])
    assert r.status_code == 504
    assert time.monotonic() - started >= 0.05
    # Faults come before any check: the token was never consumed, so it still works.
    assert (await _refresh(client, tokens["refresh_token"])).status_code == 200
    log = (await client.get("/__emulator/requests")).json()["requests"]
    assert [(e["status"], e["outcome"]) for e in log] == [
        (200, "ok"),
        (500, "fault"),
        (429, "fault"),
        (504, "fault"),
        (200, "ok"),
    ]
    assert (await _stats(client))["faults_served"] == 3
    # Retrying after a fault is not counted as presenting the token twice.
    reuse = (await client.get("/__emulator/refresh-token-reuse")).json()
    assert reuse == {"presented_twice": []}


async def test_drop_fault_in_process_raises(client: httpx.AsyncClient) -> None:
    await client.post("/__emulator/faults", json={"faults": [{"kind": "drop"}]})
    with pytest.raises(ConnectionDropped):
        await _token(client, "basic_json", grant_type="refresh_token", refresh_token="x")
    entry = (await client.get("/__emulator/requests")).json()["requests"][-1]
    assert entry["outcome"] == "fault"
    assert entry["fault"] == "drop"


async def test_fault_queue_validation_and_clear(client: httpx.AsyncClient) -> None:
    for bad in ({"faults": [{"kind": "explode"}]}, {"faults": [{"kind": "status"}]}, {}):
        assert (await client.post("/__emulator/faults", json=bad)).status_code == 422
    await client.post("/__emulator/faults", json={"faults": [{"kind": "drop"}] * 2})
    assert (await client.delete("/__emulator/faults")).json() == {"cleared": 2}
    await _exchange(client)  # no fault left


async def test_latency_delays_token_requests(client: httpx.AsyncClient) -> None:
    await _settings(client, latency_ms=60)
    started = time.monotonic()
    await _token(client, "form", grant_type="refresh_token", refresh_token="x")
    assert time.monotonic() - started >= 0.06


async def test_request_log_and_presented_twice(client: httpx.AsyncClient) -> None:
    await _settings(client, reuse_detection=False)
    tokens = await _exchange(client, "form")
    before = time.time()
    await _refresh(client, tokens["refresh_token"], "form")
    await _refresh(client, tokens["refresh_token"], "form")  # rotated out: presented twice
    log = (await client.get("/__emulator/requests")).json()["requests"]
    assert [e["seq"] for e in log] == [1, 2, 3]
    assert log[0]["code"] is not None
    assert log[0]["refresh_token"] is None
    assert log[1]["refresh_token"] == tokens["refresh_token"]
    assert log[1]["at"] >= before
    assert [e["status"] for e in log] == [200, 200, 400]
    keys = {"seq", "at", "grant_type", "style", "client_ok", "code", "refresh_token"}
    assert keys | {"status", "outcome"} <= set(log[0])
    reuse = (await client.get("/__emulator/refresh-token-reuse")).json()
    assert reuse == {"presented_twice": [tokens["refresh_token"]]}


# -- control endpoints ------------------------------------------------------------------------
async def test_settings_patch_validates(client: httpx.AsyncClient) -> None:
    r = await client.get("/__emulator/settings")
    assert r.json()["redirect_uri"] == REDIRECT
    for bad in (
        {"no_such_field": 1},
        {"latency_ms": "fast"},
        {"rotate_refresh_tokens": 1},
        {"expires_in": 1.5},
        {"session_ttl_seconds": -1},
        {"client_id": ""},
        {"redirect_uri": 5},
    ):
        r = await client.patch("/__emulator/settings", json=bad)
        assert r.status_code == 422, bad
    r = await client.patch("/__emulator/settings", json={"latency_ms": 5, "redirect_uri": None})
    assert r.status_code == 200
    assert r.json()["latency_ms"] == 5.0
    assert r.json()["redirect_uri"] is None
    # Atomic: one bad field means nothing changes.
    r = await client.patch("/__emulator/settings", json={"latency_ms": 9, "oops": True})
    assert r.status_code == 422
    assert (await client.get("/__emulator/settings")).json()["latency_ms"] == 5.0


async def test_settings_never_show_the_client_secret(client: httpx.AsyncClient) -> None:
    secret = "emulated-secret-SENTINEL-5d1e"
    patched = await client.patch("/__emulator/settings", json={"client_secret": secret})
    assert patched.status_code == 200
    for answer in (patched, await client.get("/__emulator/settings")):
        assert secret not in answer.text
        assert "client_secret" not in answer.json()
        assert answer.json()["client_id"]  # the rest is still there


async def test_reset_clears_state_but_keeps_identity(client: httpx.AsyncClient) -> None:
    await _settings(client, domain="acme", latency_ms=1, rotate_refresh_tokens=False)
    tokens = await _exchange(client)
    await client.post("/__emulator/faults", json={"faults": [{"kind": "drop"}]})
    assert (await client.post("/__emulator/reset")).status_code == 200
    stats = await _stats(client)
    assert all(value == 0 for value in stats.values()), stats
    assert (await client.get("/__emulator/requests")).json() == {"requests": []}
    assert (await _session(client, tokens["access_token"])).status_code == 401
    assert (await _refresh(client, tokens["refresh_token"])).status_code == 400
    settings = (await client.get("/__emulator/settings")).json()
    assert settings["domain"] == "acme"
    assert settings["redirect_uri"] == REDIRECT
    assert settings["latency_ms"] == 0.0
    assert settings["rotate_refresh_tokens"] is True


# -- over real HTTP ---------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_run_emulator_over_real_http() -> None:
    port = _free_port()
    settings = EmulatorSettings(redirect_uri=REDIRECT, domain="acme")
    server = asyncio.create_task(run_emulator(host="127.0.0.1", port=port, settings=settings))
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as c:
            for _ in range(100):
                try:
                    await c.get("/__emulator/stats")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            tokens = await _exchange(c, "form")
            r = await c.get(
                "/attask/api/v21.0/session", headers={"sessionID": tokens["access_token"]}
            )
            assert r.json()["data"]["customerID"] == _h32("customer:acme")
            # A real "drop" closes the socket without a status line.
            await c.post("/__emulator/faults", json={"faults": [{"kind": "drop"}]})
            with pytest.raises(httpx.RemoteProtocolError):
                await _refresh(c, tokens["refresh_token"])
            assert (await _refresh(c, tokens["refresh_token"])).status_code == 200
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=base) as c:
            await c.get("/__emulator/stats")


async def test_api_calls_are_logged_with_their_headers_and_take_queued_faults(
    client: httpx.AsyncClient,
) -> None:
    tokens = await _exchange(client)
    headers = {"sessionID": tokens["access_token"], "X-Trace": "t1"}
    queued = await client.post(
        "/__emulator/api-faults", json={"faults": [{"status": 429, "retry_after": 4}]}
    )
    assert queued.json() == {"queued": 1}
    limited = await client.get("/attask/api/v21.0/task/search", headers=headers)
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "4"
    assert (await client.get("/attask/api/v21.0/task/search", headers=headers)).status_code == 200
    logged = (await client.get("/__emulator/api-requests")).json()["requests"]
    assert [r["path"] for r in logged] == ["/attask/api/v21.0/task/search"] * 2
    assert logged[0]["headers"]["x-trace"] == "t1"
    for bad in ({"faults": [{"status": "soon"}]}, {"faults": ["x"]}, {"faults": 1}):
        assert (await client.post("/__emulator/api-faults", json=bad)).status_code == 422
    assert (await _stats(client))["api_calls"] == 2


async def test_objects_can_be_made_changed_and_deleted(client: httpx.AsyncClient) -> None:
    headers = {"sessionID": (await _exchange(client))["access_token"]}
    api = "/attask/api/v21.0"
    made = (await client.post(f"{api}/proj", json={"name": "New"}, headers=headers)).json()
    oid = made["data"]["ID"]
    changed = await client.put(f"{api}/proj/{oid}", json={"status": "CPL"}, headers=headers)
    assert changed.json()["data"]["status"] == "CPL"
    found = await client.get(f"{api}/proj/search", headers=headers)
    assert "New" in [p["name"] for p in found.json()["data"]]
    assert (await client.delete(f"{api}/proj/{oid}", headers=headers)).status_code == 200
    assert (await client.get(f"{api}/proj/{oid}", headers=headers)).status_code == 404
    assert (await client.get(f"{api}/nope/search", headers=headers)).status_code == 404
    export = await client.get(f"{api}/proj/export", params={"bytes": 100_000}, headers=headers)
    assert len(export.content) == 100_000
    assert export.content.startswith(b"[")
    assert export.content.endswith(b"]")
    sent = await client.post(f"{api}/upload", content=b"x" * 1000, headers=headers)
    assert sent.json()["data"]["size"] == 1000
    assert sent.json()["data"]["sha256"] == hashlib.sha256(b"x" * 1000).hexdigest()


async def test_one_users_sessions_expire_or_everyone_logs_out(client: httpx.AsyncClient) -> None:
    alice = await _exchange(client)
    bob_code = (await _authorize(client, username="bob"))["code"][0]
    fields = {"grant_type": "authorization_code", "code": bob_code, "redirect_uri": REDIRECT}
    bob = (await _token(client, "form", **fields)).json()
    expired = await client.post("/__emulator/expire-sessions", json={"username": "bob"})
    assert expired.json() == {"expired": 1}
    assert (await _session(client, bob["access_token"])).status_code == 401
    assert (await _session(client, alice["access_token"])).status_code == 200
    assert (await client.post("/__emulator/logout-all")).json() == {"ended": 2}
    assert (await _session(client, alice["access_token"])).status_code == 401
    bad = await client.post("/__emulator/expire-sessions", json={"username": 7})
    assert bad.status_code == 422
