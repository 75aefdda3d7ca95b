"""Encryption at rest in the database: ciphertexts bound to their row, `keys rotate`."""

from __future__ import annotations

import asyncio
import subprocess

import asyncpg
import httpx

from service.crypto import (
    generate_key,
    row_aad,
)
from tests.support import BROKER_BASE, CLIENT_ID, CLIENT_SECRET
from tests.support.broker import BrokerHarness, make_settings, outlive_hot_cache, running_broker
from tests.support.emulator import Emulator
from tests.support.processes import env_without_broker, run_cli

AAD = row_aad("connections", "11111111-1111-1111-1111-111111111111", "refresh_token")
TAG_BYTES = 16


async def _session_of(broker: BrokerHarness, connection_id: object, headers: dict[str, str]) -> str:
    response = await broker.client.get(f"/v1/connections/{connection_id}/token", headers=headers)
    assert response.status_code == 200, response.text
    session_id: str = response.json()["session_id"]
    return session_id


async def _copy_tokens(db: asyncpg.Connection, source: object, target: object) -> None:
    await db.execute(
        """
        UPDATE connections AS t
        SET refresh_token_enc = s.refresh_token_enc, access_token_enc = s.access_token_enc
        FROM connections AS s
        WHERE s.id = $1 AND t.id = $2
        """,
        source,
        target,
    )


async def _fetch_unraised(
    broker: BrokerHarness, url: str, headers: dict[str, str]
) -> httpx.Response:
    """Call the app the way a real server would: an unhandled error becomes a 500 answer."""
    transport = httpx.ASGITransport(app=broker.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=BROKER_BASE) as client:
        return await client.get(url, headers=headers)


async def test_ciphertext_copied_into_another_row_does_not_hand_out_that_session(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    a = await broker.connect("a")
    b = await broker.connect("b")
    headers = await broker.api_key("tokens:read")
    session_a = await _session_of(broker, a, headers)
    session_b = await _session_of(broker, b, headers)
    assert session_a != session_b

    await _copy_tokens(db, a, b)
    await outlive_hot_cache()
    response = await _fetch_unraised(broker, f"/v1/connections/{b}/token", headers)
    assert response.status_code != 200
    assert session_a not in response.text
    # A is untouched.
    assert await _session_of(broker, a, headers) == session_a


async def test_ciphertext_copied_into_another_row_answers_a_clear_problem(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    a = await broker.connect("a")
    b = await broker.connect("b")
    headers = await broker.api_key("tokens:read")
    await _copy_tokens(db, a, b)
    response = await _fetch_unraised(broker, f"/v1/connections/{b}/token", headers)
    # A server-side fault (tampered row or missing key), said plainly.
    assert response.status_code == 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"].endswith("stored-token-unreadable")


# `python -m service keys rotate` --------------------------------------------------------


def _cli_env(database_url: str, emulator: Emulator, keys: str) -> dict[str, str]:
    return env_without_broker(
        BROKER_DATABASE_URL=database_url,
        BROKER_ENCRYPTION_KEYS=keys,
        BROKER_WORKFRONT_URL=emulator.base_url,
        BROKER_WORKFRONT_DOMAIN="acme",
        BROKER_WORKFRONT_LANE="my",
        BROKER_CLIENT_ID=CLIENT_ID,
        BROKER_CLIENT_SECRET=CLIENT_SECRET,
        BROKER_REDIRECT_URI=f"{BROKER_BASE}/oauth/callback",
    )


async def _run_rotate(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_cli, "keys", "rotate", env=env)


async def _stored_values(db: asyncpg.Connection) -> list[str]:
    rows = await db.fetch("SELECT access_token_enc, refresh_token_enc FROM connections")
    return [value for row in rows for value in (row[0], row[1])]


async def test_keys_rotate_reencrypts_everything_under_the_primary_key(
    broker: BrokerHarness,
    db: asyncpg.Connection,
    database_url: str,
    encryption_keys: str,
) -> None:
    assert encryption_keys.startswith("k1:")
    alice = await broker.connect("alice")
    bob = await broker.connect("bob")
    headers = await broker.api_key("tokens:read")
    sessions = {alice: await _session_of(broker, alice, headers)}
    sessions[bob] = await _session_of(broker, bob, headers)
    before = await _stored_values(db)
    assert before
    assert all(value.startswith("k1:") for value in before)

    new_key = f"k2:{generate_key()}"
    env = _cli_env(database_url, broker.emulator, f"{new_key},{encryption_keys}")
    result = await _run_rotate(env)
    assert result.returncode == 0, result.stderr
    assert "re-encrypted 2 connection(s)" in result.stdout

    after = await _stored_values(db)
    assert len(after) == len(before)
    assert all(value.startswith("k2:") for value in after)
    assert not set(after) & set(before)

    # Running it again changes nothing.
    again = await _run_rotate(env)
    assert again.returncode == 0, again.stderr
    assert "re-encrypted 0 connection(s)" in again.stdout
    assert await _stored_values(db) == after

    # A broker that no longer knows k1 still serves the same sessions.
    only_k2_settings = make_settings(database_url, broker.emulator.base_url, new_key)
    async with running_broker(only_k2_settings, broker.emulator) as rotated:
        only_k2 = await rotated.api_key("tokens:read")
        for connection_id, session_id in sessions.items():
            assert await _session_of(rotated, connection_id, only_k2) == session_id
