"""The hot path's in-memory caches: fast, yet never wrong for longer than a second.

Real time, real processes: a revoked key, a deleted connection or one that
needs re-authorization must stop working within one second on every replica,
including one that has just served it from memory. Waits are 1.1 s: the
contract's second plus a margin for the request that observes it.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import httpx

from tests.support import ADMIN_KEY
from tests.support.broker import BrokerHarness
from tests.support.processes import serve_processes

CONTRACT_WAIT = 1.1


async def _warm(client: httpx.AsyncClient, urls: list[str], path: str, key: str) -> str:
    """Read ``path`` on every replica (filling their caches); the session they gave."""
    sessions = set()
    for base in urls:
        answer = await client.get(f"{base}{path}", headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200, answer.text
        sessions.add(answer.json()["session_id"])
    (session,) = sessions
    return str(session)


async def _statuses(client: httpx.AsyncClient, urls: list[str], path: str, key: str) -> list[int]:
    headers = {"Authorization": f"Bearer {key}"}
    return [(await client.get(f"{base}{path}", headers=headers)).status_code for base in urls]


async def _two_replicas_with_a_warm_connection(
    broker: BrokerHarness, urls: list[str], client: httpx.AsyncClient, *scopes: str
) -> tuple[uuid.UUID, str, str, str]:
    connection_id = await broker.connect("replicated")
    made = await client.post(
        f"{urls[0]}/v1/clients",
        json={"name": "svc", "scopes": list(scopes)},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert made.status_code == 201
    key, client_id = made.json()["api_key"], made.json()["id"]
    path = f"/v1/connections/{connection_id}/token"
    await _warm(client, urls, path, key)
    return connection_id, path, key, client_id


async def test_revoked_key_stops_on_every_replica_within_a_second(
    broker: BrokerHarness, database_url: str, tmp_path: Path
) -> None:
    async with (
        serve_processes(
            2, database_url=database_url, settings=broker.settings, log_dir=tmp_path
        ) as urls,
        httpx.AsyncClient(timeout=10) as client,
    ):
        _, path, key, client_id = await _two_replicas_with_a_warm_connection(
            broker, urls, client, "tokens:read"
        )
        revoked = await client.delete(
            f"{urls[0]}/v1/clients/{client_id}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
        assert revoked.status_code == 204
        assert (await _statuses(client, urls[:1], path, key)) == [401]  # at once where revoked
        await asyncio.sleep(CONTRACT_WAIT)
        assert await _statuses(client, urls, path, key) == [401, 401]


async def test_deleted_connection_stops_on_every_replica_within_a_second(
    broker: BrokerHarness, database_url: str, tmp_path: Path
) -> None:
    async with (
        serve_processes(
            2, database_url=database_url, settings=broker.settings, log_dir=tmp_path
        ) as urls,
        httpx.AsyncClient(timeout=10) as client,
    ):
        connection_id, path, key, _ = await _two_replicas_with_a_warm_connection(
            broker, urls, client, "tokens:read", "connections:write"
        )
        deleted = await client.delete(
            f"{urls[0]}/v1/connections/{connection_id}", headers={"Authorization": f"Bearer {key}"}
        )
        assert deleted.status_code == 204
        assert (await _statuses(client, urls[:1], path, key)) == [404]
        await asyncio.sleep(CONTRACT_WAIT)
        assert await _statuses(client, urls, path, key) == [404, 404]


async def test_needs_reauth_stops_on_every_replica_within_a_second(
    broker: BrokerHarness, database_url: str, tmp_path: Path, db: asyncpg.Connection
) -> None:
    async with (
        serve_processes(
            2,
            database_url=database_url,
            settings=broker.settings,
            log_dir=tmp_path,
            # The connection was just made: without this the forced refresh
            # would be held back by the minimum interval and never reach Workfront.
            extra_env={"BROKER_FORCE_REFRESH_MIN_INTERVAL_SECONDS": "0"},
        ) as urls,
        httpx.AsyncClient(timeout=10) as client,
    ):
        connection_id, path, key, _ = await _two_replicas_with_a_warm_connection(
            broker, urls, client, "tokens:read"
        )
        user_id = await db.fetchval("SELECT user_id FROM connections WHERE id = $1", connection_id)
        await broker.emulator.control.post("/__emulator/revoke", json={"user_id": user_id})
        # Replica 0 learns of the revoked grant from a forced refresh.
        forced = await client.post(
            f"{urls[0]}/v1/connections/{connection_id}/refresh",
            headers={"Authorization": f"Bearer {key}"},
        )
        assert forced.status_code == 409
        assert (await _statuses(client, urls[:1], path, key)) == [409]
        await asyncio.sleep(CONTRACT_WAIT)
        assert await _statuses(client, urls, path, key) == [409, 409]
