"""The proactive refresher: idle connections stay alive, failures back off, a revoked
grant stops it. Replicas sharing the work: tests/system/test_refresher.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx

from service.config import Settings
from tests.support.broker import running_broker
from tests.support.db import wait_until
from tests.support.emulator import Emulator


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

        await wait_until(renewed, within=6, what="the refresher to renew the idle connection")
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

        await wait_until(recovered, within=10, what="recovery after two transient failures")
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

        await wait_until(marked, within=5, what="needs_reauth")
        seen = len(await emulator.requests())
        await asyncio.sleep(1)  # five more refresher rounds
        assert len(await emulator.requests()) == seen
        reader = await broker.api_key("connections:read")
        meta = (await broker.client.get(f"/v1/connections/{connection_id}", headers=reader)).json()
        assert meta["last_error_class"] == "grant_revoked"
        assert meta["next_refresh_at"] is None
