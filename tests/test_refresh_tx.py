"""The refresh transaction runs on the driver under SQLAlchemy's pool
(service.refresh_tx): whatever ends it, no pooled connection is left inside
an open transaction holding a row lock, and the next refresh works."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from collections.abc import Callable
from datetime import timedelta

import asyncpg

from service.config import Settings
from tests.conftest import (
    BrokerHarness,
    Emulator,
    asyncpg_dsn,
    row_locked_elsewhere,
    running_broker,
)

WEBHOOK_SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
_OPEN_TRANSACTIONS = """
    SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()
      AND state LIKE 'idle in transaction%'
"""


async def _refresh(broker: BrokerHarness, connection_id: uuid.UUID, headers: dict[str, str]) -> int:
    response = await broker.client.post(f"/v1/connections/{connection_id}/refresh", headers=headers)
    return response.status_code


async def _row_lockable(db: asyncpg.Connection, connection_id: uuid.UUID) -> bool:
    async with db.transaction():
        locked = await db.fetchval(
            "SELECT id FROM connections WHERE id = $1 FOR UPDATE SKIP LOCKED", connection_id
        )
    return locked is not None


async def test_lock_timeout_rolls_back_and_the_pool_stays_clean(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
    database_url: str,
) -> None:
    # A pool of 2: a connection left in its transaction would soon be reused.
    settings = settings_for(lock_timeout_seconds=0.3, db_pool_size=2)
    async with running_broker(settings, emulator) as broker:
        connection_id = await broker.connect("alice")
        headers = await broker.api_key("tokens:read")
        async with row_locked_elsewhere(database_url, connection_id):
            assert await _refresh(broker, connection_id, headers) == 503
        assert await db.fetchval(_OPEN_TRANSACTIONS) == 0
        for _ in range(4):
            assert await _refresh(broker, connection_id, headers) == 200
        assert await db.fetchval(_OPEN_TRANSACTIONS) == 0
        assert await _row_lockable(db, connection_id)
        assert await emulator.presented_twice() == []


async def test_refresh_cancelled_while_waiting_for_the_lock_frees_everything(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
    database_url: str,
) -> None:
    settings = settings_for(lock_timeout_seconds=30, db_pool_size=2)
    async with running_broker(settings, emulator) as broker:
        connection_id = await broker.connect("alice")
        headers = await broker.api_key("tokens:read")
        core = broker.app.state.runtime.broker
        async with row_locked_elsewhere(database_url, connection_id):
            waiting = asyncio.create_task(_refresh(broker, connection_id, headers))
            while connection_id not in core._flights:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # in the lock wait now
            # Shutdown cancels refreshes that have not presented a token yet.
            await core.drain()
            # In process the caller sees the cancellation (a served request
            # would answer 503 shutting-down, tests/test_shutdown.py).
            await asyncio.wait([waiting])
            assert waiting.cancelled()
        assert await db.fetchval(_OPEN_TRANSACTIONS) == 0
        assert await _row_lockable(db, connection_id)
        assert [r for r in await emulator.requests() if r["grant_type"] == "refresh_token"] == []
        for _ in range(3):
            assert await _refresh(broker, connection_id, headers) == 200
        assert await db.fetchval(_OPEN_TRANSACTIONS) == 0


async def test_connection_deleted_during_the_lock_wait_is_404_and_rolls_back(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
    database_url: str,
) -> None:
    settings = settings_for(lock_timeout_seconds=30, db_pool_size=2)
    async with running_broker(settings, emulator) as broker:
        connection_id = await broker.connect("alice")
        other = await broker.connect("bob")
        headers = await broker.api_key("tokens:read")
        core = broker.app.state.runtime.broker
        _, kwargs = asyncpg_dsn(database_url)
        deleter = await asyncpg.connect(**kwargs)
        try:
            async with deleter.transaction():
                await deleter.execute("DELETE FROM connections WHERE id = $1", connection_id)
                # The refresh read the row's version already and now waits for its lock.
                waiting = asyncio.create_task(_refresh(broker, connection_id, headers))
                while connection_id not in core._flights:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)
        finally:
            await deleter.close()
        assert await waiting == 404
        assert await db.fetchval(_OPEN_TRANSACTIONS) == 0
        for _ in range(3):
            assert await _refresh(broker, other, headers) == 200
        assert await db.fetchval(_OPEN_TRANSACTIONS) == 0


async def test_refresher_worker_survives_a_cancelled_refresh(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
) -> None:
    """drain() cancels a refresh that has not presented its token yet; the
    refresher's one worker, which waited on it, must go on with the next."""
    # A pool of 2: refreshes may hold one connection, so the refresher's
    # refresh waits for the on-demand one (at Workfront) and is cancellable.
    settings = settings_for(
        refresher_enabled=True,
        refresher_concurrency=1,
        refresher_poll_seconds=0.1,
        db_pool_size=2,
    )
    async with running_broker(settings, emulator) as broker:
        stuck, later, busy = [await broker.connect(name) for name in ("alice", "bob", "carol")]
        headers = await broker.api_key("tokens:read")
        core = broker.app.state.runtime.broker
        await emulator.configure(latency_ms=1500)
        on_demand = asyncio.create_task(_refresh(broker, busy, headers))
        while not core._presenting:
            await asyncio.sleep(0.01)
        due = "UPDATE connections SET next_refresh_at = now() - interval '1 second' WHERE id = $1"
        await db.execute(due, stuck)
        while stuck not in core._flights:  # the worker's refresh waits for a connection
            await asyncio.sleep(0.01)
        await core.drain()  # cancels that one, waits for the on-demand one
        assert await on_demand == 200
        await emulator.configure(latency_ms=0)
        await db.execute(due, later)
        deadline = asyncio.get_running_loop().time() + 10
        while await db.fetchval("SELECT token_version FROM connections WHERE id = $1", later) < 2:
            assert asyncio.get_running_loop().time() < deadline, "the refresher stalled"
            await asyncio.sleep(0.05)
        assert await db.fetchval(_OPEN_TRANSACTIONS) == 0
    assert await emulator.presented_twice() == []


async def test_failure_statements_write_what_the_orm_wrote(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
) -> None:
    """The transient and revoked outcomes, column by column, with their audit
    events in order and the webhook message (the CTE statements of refresh_tx)."""
    settings = settings_for(webhook_url="http://127.0.0.1:9/hook", webhook_secret=WEBHOOK_SECRET)
    async with running_broker(settings, emulator) as broker:
        connection_id = await broker.connect("alice")
        headers = await broker.api_key("tokens:read")
        row = "SELECT * FROM connections WHERE id = $1"
        before = await db.fetchrow(row, connection_id)

        await emulator.faults({"kind": "status", "status": 503, "retry_after": 120})
        assert await _refresh(broker, connection_id, headers) == 503
        after = await db.fetchrow(row, connection_id)
        assert after["refresh_failures"] == 1
        assert after["last_error"] == "transient: token endpoint answered 503"
        assert after["last_error_class"] == "transient"
        assert after["next_refresh_at"] >= await db.fetchval("SELECT now()") + timedelta(
            seconds=110
        )
        unchanged = ("status", "token_version", "access_token_enc", "refresh_token_enc")
        assert [after[c] for c in (*unchanged, "updated_at")] == [
            before[c] for c in (*unchanged, "updated_at")
        ]
        failed = await db.fetchrow(
            "SELECT kind, detail FROM events WHERE connection_id = $1 ORDER BY id DESC LIMIT 1",
            connection_id,
        )
        assert failed["kind"] == "refresh.failed"
        assert json.loads(failed["detail"]) == {
            "reason": "transient",
            "detail": "token endpoint answered 503",
        }

        user_id = after["user_id"]
        revoked = await emulator.control.post("/__emulator/revoke", json={"user_id": user_id})
        revoked.raise_for_status()
        assert await _refresh(broker, connection_id, headers) == 409
        gone = await db.fetchrow(row, connection_id)
        assert gone["status"] == "needs_reauth"
        assert gone["refresh_failures"] == 2
        assert gone["last_error"].startswith("grant_revoked: token endpoint answered 400")
        assert gone["last_error_class"] == "grant_revoked"
        assert gone["next_refresh_at"] is None
        assert gone["updated_at"] > before["updated_at"]
        assert gone["token_version"] == before["token_version"]
        events = await db.fetch(
            "SELECT kind, detail FROM events WHERE connection_id = $1 ORDER BY id DESC LIMIT 2",
            connection_id,
        )
        assert [(e["kind"], json.loads(e["detail"])) for e in reversed(events)] == [
            ("refresh.failed", {"reason": "grant_revoked"}),
            ("connection.needs_reauth", {"reason": "grant_revoked"}),
        ]
        message = await db.fetchrow(
            "SELECT event_type, payload, next_attempt_at, attempts FROM webhook_outbox"
            " WHERE event_type = 'connection.needs_reauth'"
        )
        assert message["attempts"] == 0
        assert message["next_attempt_at"] is not None
        payload = json.loads(message["payload"])
        assert payload["type"] == "connection.needs_reauth"
        assert payload["data"] == {
            "connection_id": str(connection_id),
            "user_id": user_id,
            "external_ref": None,
            "reason": "grant_revoked",
        }
        assert await db.fetchval(_OPEN_TRANSACTIONS) == 0
