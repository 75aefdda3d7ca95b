"""The logs of a real `serve` process: JSON lines with context, and no secret in them.

One `serve` process at DEBUG drives every endpoint, failures included; then
every line it wrote must be a JSON object with a UTC timestamp, a level and an
event, request lines must carry their request, client and connection ids, and
no token, code, key, state or secret the test knows may appear anywhere.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from service.crypto import parse_keyring
from service.logs import make_formatter
from service.web.routes.oauth import ATTEMPT_COOKIE
from tests.support import ADMIN_KEY, CLIENT_SECRET
from tests.support.broker import BrokerHarness, login_at_emulator
from tests.support.processes import serve_processes

RETURN_PREFIX = "https://app.example/"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _client_key(client: httpx.AsyncClient, *scopes: str) -> tuple[str, str]:
    created = await client.post(
        "/v1/clients",
        json={"name": f"svc-{uuid.uuid4().hex[:6]}", "scopes": list(scopes)},
        headers=_bearer(ADMIN_KEY),
    )
    assert created.status_code == 201, created.text
    body = created.json()
    return body["id"], body["api_key"]


async def _browser_flow(
    client: httpx.AsyncClient, start_path: str, username: str, secrets: dict[str, str]
) -> httpx.Response:
    """Authorize as ``username`` from ``start_path``; return the callback's answer."""
    start = await client.get(start_path)
    assert start.status_code == 302, start.text
    location = start.headers["location"]
    secrets[f"state ({username})"] = parse_qs(urlsplit(location).query)["state"][0]
    secrets[f"attempt cookie ({username})"] = start.cookies[ATTEMPT_COOKIE]
    callback = await login_at_emulator(location, username=username)
    secrets[f"code ({username})"] = parse_qs(urlsplit(callback).query)["code"][0]
    return await client.get(callback)


def _connection_id(page: httpx.Response) -> str:
    marker = 'id="connection-id">'
    start = page.text.index(marker) + len(marker)
    return page.text[start : page.text.index("<", start)]


async def test_serve_writes_json_lines_with_context_and_no_secret(
    broker: BrokerHarness, database_url: str, encryption_keys: str, tmp_path: Path
) -> None:
    secrets: dict[str, str] = {"client secret": CLIENT_SECRET, "admin key": ADMIN_KEY}
    for entry, (key_id, raw) in zip(
        encryption_keys.split(","), parse_keyring(encryption_keys), strict=True
    ):
        secrets[f"encryption key {key_id}"] = entry.partition(":")[2].strip()
        secrets[f"encryption key {key_id} (hex)"] = raw.hex()
    env = {
        "BROKER_LOG_LEVEL": "DEBUG",
        "BROKER_LOG_FORMAT": "json",
        "BROKER_ALLOWED_RETURN_URLS": RETURN_PREFIX,
        "BROKER_FORCE_REFRESH_MIN_INTERVAL_SECONDS": "0",  # bob was connected just now
    }
    async with (
        serve_processes(
            1, database_url=database_url, settings=broker.settings, log_dir=tmp_path, extra_env=env
        ) as [url],
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        page = await _browser_flow(client, "/oauth/authorize", "alice", secrets)
        assert page.status_code == 200, page.text
        alice = _connection_id(page)

        reader_id, reader_key = await _client_key(client, "tokens:read")
        _, manager_key = await _client_key(client, "connections:read", "connections:write")
        secrets |= {"reader key": reader_key, "manager key": manager_key}
        reader, manager = _bearer(reader_key), _bearer(manager_key)

        # A connect link: its token is as good as a password until used.
        link = await client.post(
            "/v1/connect-sessions",
            json={"external_ref": "ext-42", "return_url": f"{RETURN_PREFIX}done"},
            headers=manager,
        )
        assert link.status_code == 201, link.text
        link_url = urlsplit(link.json()["url"])
        link_token = link_url.path.rpartition("/")[2]
        secrets["connect link token"] = link_token
        assert (await client.get(link_url.path)).status_code == 200
        authorize = f"/oauth/authorize?session={link_token}"
        finished = await _browser_flow(client, authorize, "bob", secrets)
        assert finished.status_code == 302, finished.text
        assert finished.headers["location"].startswith(RETURN_PREFIX)
        reused = await client.get(link_url.path)
        assert reused.status_code == 400
        bob = parse_qs(urlsplit(finished.headers["location"]).query)["connection_id"][0]

        # Token reads and a forced refresh, one with the caller's own request id.
        fetched = await client.get(
            f"/v1/connections/{alice}/token", headers={**reader, "X-Request-ID": "req-abc-123"}
        )
        assert fetched.status_code == 200, fetched.text
        assert fetched.headers["x-request-id"] == "req-abc-123"
        secrets["session (fetched)"] = fetched.json()["session_id"]
        # Again at once: the key is known now, so the fast path answers (before routing).
        again = await client.get(
            f"/v1/connections/{alice}/token", headers={**reader, "X-Request-ID": "req-fast-456"}
        )
        assert again.status_code == 200, again.text
        assert again.headers["x-request-id"] == "req-fast-456"
        refreshed = await client.post(f"/v1/connections/{alice}/refresh", headers=reader)
        assert refreshed.status_code == 200, refreshed.text
        secrets["session (refreshed)"] = refreshed.json()["session_id"]

        # Reads, and each kind of failure.
        unknown_key = f"wtb_unknown-{uuid.uuid4().hex}"
        secrets["unknown key"] = unknown_key
        checks: list[tuple[str, str, dict[str, str], int]] = [
            ("GET", "/v1/connections?external_ref=ext-42", manager, 200),
            ("GET", f"/v1/connections/{alice}", manager, 200),
            ("GET", "/v1/clients", _bearer(ADMIN_KEY), 200),
            ("GET", "/v1/connections", _bearer(unknown_key), 401),
            ("GET", "/v1/connections", reader, 403),
            ("GET", f"/v1/connections/{uuid.uuid4()}/token", reader, 404),
            ("GET", f"/v1/connections/{alice}/token?min_ttl=-5", reader, 422),
            ("GET", "/oauth/callback?error=access_denied&state=nope", {}, 400),
            ("GET", f"/oauth/callback?code={uuid.uuid4().hex}&state=forged", {}, 400),
            ("GET", "/healthz", {}, 200),
            ("GET", "/readyz", {}, 200),
            ("GET", "/metrics", {}, 200),
            ("GET", "/openapi.json", {}, 200),
            ("POST", f"/v1/connections/{bob}/refresh", reader, 409),
            ("DELETE", f"/v1/connections/{alice}", manager, 204),
            ("GET", f"/v1/connections/{alice}/token", reader, 404),
        ]
        # Workfront revokes bob's grant: his next refresh fails in its own task.
        bob_user = (await client.get(f"/v1/connections/{bob}", headers=manager)).json()["user_id"]
        revoked = await broker.emulator.control.post(
            "/__emulator/revoke", json={"user_id": bob_user}
        )
        revoked.raise_for_status()
        for method, path, headers, status in checks:
            answer = await client.request(method, path, headers=headers)
            assert answer.status_code == status, (method, path, answer.text)
            assert answer.headers.get("x-request-id"), path

    for index, request in enumerate(await broker.emulator.requests()):
        for field in ("code", "refresh_token"):
            if request.get(field):
                secrets[f"{field} #{index}"] = request[field]

    log_text = (tmp_path / "serve-0.log").read_text()
    leaked = [name for name, value in secrets.items() if value in log_text]
    assert leaked == []

    lines: list[dict[str, Any]] = []
    for line in log_text.splitlines():
        if line.strip():
            record = json.loads(line)  # every line, uvicorn's own included
            assert {"timestamp", "level", "logger", "event"} <= record.keys(), line
            assert datetime.fromisoformat(record["timestamp"]).utcoffset() is not None
            assert record["timestamp"].endswith("+00:00"), line
            lines.append(record)
    assert any(record["logger"].startswith("uvicorn") for record in lines)
    access = [record for record in lines if record["logger"] == "service.access"]
    assert len(access) >= len(checks) + 10
    assert all(record["request_id"] for record in access)
    assert all("?" not in record["path"] for record in access)  # never a query string
    # A duration of this request, not of something else (a clock mix-up shows here).
    assert all(0 <= record["duration_ms"] < 60_000 for record in access)

    for request_id in ("req-abc-123", "req-fast-456"):  # routed, then the fast path
        (mine,) = [record for record in access if record["request_id"] == request_id]
        assert mine["path"] == "/v1/connections/{connection_id}/token"
        assert mine["status"] == 200
        assert mine["client_id"] == reader_id
        assert mine["connection_id"] == alice
    # The failed refresh logs from its own task, still naming its connection.
    (revoked_line,) = [
        record
        for record in lines
        if record["logger"] == "service.broker" and "re-authorization" in record["event"]
    ]
    assert revoked_line["connection_id"] == bob
    assert revoked_line["level"] == "WARNING"


def test_text_lines_escape_control_characters_from_requests() -> None:
    """A path can carry a newline or NUL (a 404's raw path, a path parameter):
    in text logs it must not start a forged line of its own."""
    formatter = make_formatter("text")
    record = logging.LogRecord(
        "service.access", logging.INFO, "x.py", 1, "GET %s 404", ("/a\nFAKE ERROR\x00",), None
    )
    record.connection_id = "c\r\nd"
    line = formatter.format(record)
    for control in ("\n", "\r", "\x00"):
        assert control not in line
    assert "GET /a\\x0aFAKE ERROR\\x00 404" in line
    assert "connection_id=c\\x0d\\x0ad" in line
