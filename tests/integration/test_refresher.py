"""The proactive refresher: idle connections stay alive; replicas share the work."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from service.config import Settings
from tests.support.broker import BrokerHarness, running_broker
from tests.support.db import seed_connections
from tests.support.emulator import Emulator
from tests.support.processes import serve_processes


async def _wait_until(predicate: Callable[[], Any], *, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _fast_refresher(settings_for: Callable[..., Settings], **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "refresher_enabled": True,
        "refresher_poll_seconds": 0.2,
        "session_ttl_seconds": 4,
        "refresh_ahead_seconds": 2,
        "retry_base_seconds": 0.5,
        "retry_max_seconds": 1,
    }
    values.update(overrides)
    return settings_for(**values)


async def test_idle_connection_is_renewed_before_it_expires(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
) -> None:
    await emulator.configure(session_ttl_seconds=6)
    # Renewal comes due 4-4.8 s before the 6 s session lapses: seconds of margin.
    settings = _fast_refresher(settings_for, session_ttl_seconds=6, refresh_ahead_seconds=4)
    async with running_broker(settings, emulator) as broker:
        connection_id = await broker.connect("idle")
        first_expiry = await db.fetchval(
            "SELECT expires_at FROM connections WHERE id = $1", connection_id
        )

        async def renewed() -> bool:
            version = await db.fetchval(
                "SELECT token_version FROM connections WHERE id = $1", connection_id
            )
            return bool(version >= 2)

        await _wait_until(renewed, within=6, what="the refresher to renew the idle connection")
        assert datetime.now(UTC) < first_expiry  # renewed before the old session lapsed
        headers = await broker.api_key("tokens:read")
        token = await broker.client.get(
            f"/v1/connections/{connection_id}/token", params={"min_ttl": 0}, headers=headers
        )
        session_id = token.json()["session_id"]
        # Past the first session's lifetime the fetched one still works: it is the new one.
        await asyncio.sleep(max(0.0, (first_expiry - datetime.now(UTC)).total_seconds()) + 0.2)
        async with httpx.AsyncClient(base_url=emulator.base_url) as wf:
            projects = await wf.get(
                "/attask/api/v21.0/proj/search", headers={"sessionID": session_id}
            )
        assert projects.status_code == 200
    assert await emulator.presented_twice() == []


async def test_transient_failures_back_off_and_recover(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
) -> None:
    async with running_broker(
        _fast_refresher(settings_for, session_ttl_seconds=60), emulator
    ) as broker:
        connection_id = await broker.connect("flaky")
        await emulator.faults({"kind": "status", "status": 500}, {"kind": "status", "status": 503})
        await db.execute(
            "UPDATE connections SET next_refresh_at = now() WHERE id = $1", connection_id
        )

        async def recovered() -> bool:
            row = await db.fetchrow(
                "SELECT token_version, refresh_failures FROM connections WHERE id = $1",
                connection_id,
            )
            return bool(row["token_version"] == 2 and row["refresh_failures"] == 0)

        await _wait_until(recovered, within=10, what="recovery after two transient failures")
        reader = await broker.api_key("connections:read")
        meta = (await broker.client.get(f"/v1/connections/{connection_id}", headers=reader)).json()
        assert meta["status"] == "active"
        assert meta["last_error_class"] is None
        assert meta["next_refresh_at"] is not None
    statuses = [
        r["status"] for r in await emulator.requests() if r["grant_type"] == "refresh_token"
    ]
    assert statuses == [500, 503, 200]


async def test_revoked_grant_stops_the_refresher(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
) -> None:
    async with running_broker(_fast_refresher(settings_for), emulator) as broker:
        connection_id = await broker.connect("gone")
        user_id = await db.fetchval("SELECT user_id FROM connections WHERE id = $1", connection_id)
        await emulator.control.post("/__emulator/revoke", json={"user_id": user_id})
        await db.execute(
            "UPDATE connections SET next_refresh_at = now() WHERE id = $1", connection_id
        )

        async def marked() -> bool:
            status = await db.fetchval(
                "SELECT status FROM connections WHERE id = $1", connection_id
            )
            return bool(status == "needs_reauth")

        await _wait_until(marked, within=5, what="needs_reauth")
        seen = len(await emulator.requests())
        await asyncio.sleep(1)  # five more refresher rounds
        assert len(await emulator.requests()) == seen
        reader = await broker.api_key("connections:read")
        meta = (await broker.client.get(f"/v1/connections/{connection_id}", headers=reader)).json()
        assert meta["last_error_class"] == "grant_revoked"
        assert meta["next_refresh_at"] is None


async def test_three_replicas_refresh_a_thousand_due_connections_exactly_once(
    broker: BrokerHarness,
    db: asyncpg.Connection,
    database_url: str,
    tmp_path: Path,
) -> None:
    emulator = broker.emulator
    ids = await seed_connections(db, emulator, broker.settings, 1000)
    assert len(ids) == 1000
    async with serve_processes(
        3,
        database_url=database_url,
        settings=broker.settings,
        log_dir=tmp_path,
        extra_env={
            "BROKER_REFRESHER_POLL_SECONDS": "0.2",
            "BROKER_REFRESHER_BATCH_SIZE": "50",
            "BROKER_REFRESHER_CONCURRENCY": "16",
        },
    ):

        async def all_refreshed() -> bool:
            left = await db.fetchval("SELECT count(*) FROM connections WHERE token_version < 2")
            return bool(left == 0)

        await _wait_until(all_refreshed, within=90, what="every connection to be refreshed")
        await asyncio.sleep(1)  # any double refresh would land now
    versions = await db.fetch("SELECT token_version, count(*) FROM connections GROUP BY 1")
    assert [(r[0], r[1]) for r in versions] == [(2, 1000)]
    refreshes = [r for r in await emulator.requests() if r["grant_type"] == "refresh_token"]
    assert len(refreshes) == 1000
    assert {r["status"] for r in refreshes} == {200}
    assert await emulator.presented_twice() == []
    assert (await emulator.stats())["reuse_detected"] == 0
