"""The refresh's statements run on the driver under SQLAlchemy's pool
(service.tokens.lease): whatever ends a refresh, no pooled connection is left
inside an open transaction, no claim outlives it, and the next refresh works.
When the database connections die while Workfront answers, the new tokens are
stored on new connections, never over a row that moved on."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.config import Settings
from service.db.engine import autocommit, make_engine
from service.tokens.lease import Claims, LeaseOwner, TokenWrite
from service.tokens.token_columns import TokenColumns
from tests.support.broker import BrokerHarness, running_broker
from tests.support.db import asyncpg_dsn, row_locked_elsewhere
from tests.support.emulator import Emulator

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
        core = broker.app.state.runtime.tokens
        async with row_locked_elsewhere(database_url, connection_id):
            waiting = asyncio.create_task(_refresh(broker, connection_id, headers))
            while connection_id not in core.flights:
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
        core = broker.app.state.runtime.tokens
        _, kwargs = asyncpg_dsn(database_url)
        deleter = await asyncpg.connect(**kwargs)
        try:
            async with deleter.transaction():
                await deleter.execute("DELETE FROM connections WHERE id = $1", connection_id)
                # The refresh read the row's version already and now waits for its lock.
                waiting = asyncio.create_task(_refresh(broker, connection_id, headers))
                while connection_id not in core.flights:
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
    # One refresh at Workfront at a time: the refresher's refresh waits for
    # the on-demand one (at Workfront), so it has not presented and is cancellable.
    settings = settings_for(
        refresher_enabled=True,
        refresher_concurrency=1,
        refresher_poll_seconds=0.1,
        refresh_concurrency=1,
    )
    async with running_broker(settings, emulator) as broker:
        stuck, later, busy = [await broker.connect(name) for name in ("alice", "bob", "carol")]
        headers = await broker.api_key("tokens:read")
        core = broker.app.state.runtime.tokens
        await emulator.configure(latency_ms=1500)
        on_demand = asyncio.create_task(_refresh(broker, busy, headers))
        while not core.presenting:
            await asyncio.sleep(0.01)
        due = "UPDATE connections SET next_refresh_at = now() - interval '1 second' WHERE id = $1"
        await db.execute(due, stuck)
        while stuck not in core.flights:  # the worker's refresh waits for its turn
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
            "instance": "default",
            "external_ref": None,
            "reason": "grant_revoked",
        }
        assert await db.fetchval(_OPEN_TRANSACTIONS) == 0


_EVERY_OTHER_CONNECTION = """
    SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()
"""
# The broker's pooled connections: all but the one holding its liveness lock.
_POOLED_CONNECTIONS = """
    SELECT count(pg_terminate_backend(a.pid)) FROM pg_stat_activity AS a
    WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
      AND NOT EXISTS (
        SELECT 1 FROM pg_locks AS l WHERE l.pid = a.pid AND l.locktype = 'advisory'
      )
"""


async def _at_workfront(emulator: Emulator) -> None:
    """Until Workfront has the refresh request (and is slow to answer it)."""
    for _ in range(250):
        if any(r["grant_type"] == "refresh_token" for r in await emulator.requests()):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out waiting for the refresh to reach Workfront")


async def _cut_the_connections(
    db: asyncpg.Connection, emulator: Emulator, *, every: bool = False
) -> None:
    """While Workfront is answering, the broker's pooled database connections
    die (``every``: its liveness lock's too, as in a failover)."""
    await _at_workfront(emulator)
    cut = await db.fetchval(_EVERY_OTHER_CONNECTION if every else _POOLED_CONNECTIONS)
    assert cut >= 1


async def _open_the_whole_pool(engine: AsyncEngine, size: int) -> None:
    """Every pooled connection opened (and back in the pool)."""
    held = [await engine.connect() for _ in range(size)]
    for conn in held:
        await conn.exec_driver_sql("SELECT 1")
    for conn in held:
        await conn.close()


async def _lost_refreshes(broker: BrokerHarness) -> float:
    metrics = (await broker.client.get("/metrics")).text
    # Every instance's series (the instance label is the connection's).
    found = re.findall(
        r'^broker_refreshes_total\{[^}]*outcome="lost"[^}]*\} (\S+)$', metrics, re.MULTILINE
    )
    return sum(float(value) for value in found)


@pytest.mark.parametrize("every", [False, True], ids=["pooled", "failover"])
async def test_tokens_refreshed_while_the_connections_died_are_stored_on_new_ones(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
    every: bool,
) -> None:
    """Workfront rotated the refresh token while every pooled connection died
    (and, in a failover, this process's liveness lock too). The new tokens are
    stored on a new connection, so the connection lives on instead of needing
    re-authorization; the dead pooled connections are dropped as the retries
    meet them, not met again."""
    settings = settings_for(db_pool_size=4, upstream_timeout_seconds=3)
    async with running_broker(settings, emulator) as broker:
        connection_id = await broker.connect("alice")
        headers = await broker.api_key("tokens:read")
        await _open_the_whole_pool(broker.app.state.runtime.reader, 4)
        lost = await _lost_refreshes(broker)
        await emulator.configure(latency_ms=800)
        waiting = asyncio.create_task(_refresh(broker, connection_id, headers))
        await _cut_the_connections(db, emulator, every=every)
        assert await waiting == 200
        assert await _lost_refreshes(broker) == lost
        await emulator.configure(latency_ms=0)
        row = await db.fetchrow(
            "SELECT status, token_version FROM connections WHERE id = $1", connection_id
        )
        assert (row["status"], row["token_version"]) == ("active", 2)
        # The stored refresh token is the live one: the next refresh works.
        assert await _refresh(broker, connection_id, headers) == 200
        assert (
            await db.fetchval("SELECT token_version FROM connections WHERE id = $1", connection_id)
            == 3
        )
        assert await emulator.presented_twice() == []
        assert await db.fetchval(_OPEN_TRANSACTIONS) == 0


@pytest.mark.parametrize(
    ("change", "answer", "after", "lost_more"),
    [
        # another replica presented the dead refresh token and was refused:
        # the row stays needs_reauth, the refresh answers 409, a loss
        (
            "UPDATE connections SET status = 'needs_reauth' WHERE id = $1",
            409,
            ("needs_reauth", 1),
            1,
        ),
        # the user re-authorized meanwhile: that row stands (their newer grant)
        (
            "UPDATE connections SET token_version = token_version + 1 WHERE id = $1",
            200,
            ("active", 2),
            0,
        ),
    ],
)
async def test_storing_again_never_overwrites_a_row_that_moved_on(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
    database_url: str,
    change: str,
    answer: int,
    after: tuple[str, int],
    lost_more: int,
) -> None:
    async with running_broker(settings_for(db_pool_size=4), emulator) as broker:
        connection_id = await broker.connect("alice")
        headers = await broker.api_key("tokens:read")
        sealed = await db.fetchval(
            "SELECT refresh_token_enc FROM connections WHERE id = $1", connection_id
        )
        lost = await _lost_refreshes(broker)
        await emulator.configure(latency_ms=800)
        waiting = asyncio.create_task(_refresh(broker, connection_id, headers))
        _, kwargs = asyncpg_dsn(database_url)
        other = await asyncpg.connect(**kwargs)
        try:
            # While Workfront answers, the row changes elsewhere.
            await _at_workfront(emulator)
            await other.execute(change, connection_id)
        finally:
            await other.close()
        assert await waiting == answer
        row = await db.fetchrow(
            "SELECT status, token_version, refresh_token_enc FROM connections WHERE id = $1",
            connection_id,
        )
        assert (row["status"], row["token_version"]) == after
        assert row["refresh_token_enc"] == sealed  # not overwritten
        # Its claim did not stay behind for other processes to wait on.
        assert (
            await db.fetchval(
                "SELECT refresh_lease_owner FROM connections WHERE id = $1", connection_id
            )
            is None
        )
        assert await db.fetchval(_OPEN_TRANSACTIONS) == 0
        assert await _lost_refreshes(broker) == lost + lost_more


async def test_store_again_after_a_failover_opens_a_new_connection(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
    database_url: str,
) -> None:
    """After a failover every pooled connection is dead. Meeting one must
    retire them all (as SQLAlchemy does for its own statements), so the next
    attempt opens a new connection instead of meeting the next dead one."""
    async with running_broker(settings_for(), emulator) as broker:
        connection_id = await broker.connect("alice")
    engine = autocommit(make_engine(database_url, pool_size=3))
    owner = LeaseOwner(autocommit(make_engine(database_url, pool_size=1)))
    claims = Claims(engine, owner, lease_seconds=60)
    await db.execute(
        "UPDATE connections SET refresh_lease_owner = $2, refresh_lease_until = now()"
        " + interval '1 minute' WHERE id = $1",
        connection_id,
        owner.id,
    )
    try:
        write = TokenWrite(
            connection_id=connection_id,
            from_version=1,
            columns=TokenColumns(
                access_token_enc="sealed-access",
                refresh_token_enc="sealed-refresh",
                expires_at=datetime.now(UTC) + timedelta(hours=1),
                next_refresh_at=datetime.now(UTC) + timedelta(minutes=50),
                refreshed_at=datetime.now(UTC),
                wid=None,
            ),
        )
        await _open_the_whole_pool(engine, 3)
        assert await db.fetchval(_EVERY_OTHER_CONNECTION) == 3
        await asyncio.sleep(0.2)
        with pytest.raises((DBAPIError, asyncpg.InterfaceError)):
            await claims.store_tokens(write)
        assert await claims.store_tokens(write)  # on a new connection
        assert not await claims.store_tokens(write)  # the version moved on, the claim gone
        version = await db.fetchval(
            "SELECT token_version FROM connections WHERE id = $1", connection_id
        )
        assert version == 2
    finally:
        await engine.dispose()


async def test_tokens_that_cannot_be_stored_in_time_are_counted_lost(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The connections die while Workfront answers, and the row stays locked
    elsewhere for longer than the retry may take: the loss is reported
    (metric, error log), the caller gets a 503, and nothing half-written is
    left behind."""
    settings = settings_for(db_pool_size=4, upstream_timeout_seconds=1)
    async with running_broker(settings, emulator) as broker:
        connection_id = await broker.connect("alice")
        headers = await broker.api_key("tokens:read")
        lost = await _lost_refreshes(broker)
        await emulator.configure(latency_ms=500)
        waiting = asyncio.create_task(_refresh(broker, connection_id, headers))
        await _cut_the_connections(db, emulator)
        _, kwargs = asyncpg_dsn(database_url)
        other = await asyncpg.connect(**kwargs)
        try:
            async with other.transaction():
                await other.execute(
                    "SELECT 1 FROM connections WHERE id = $1 FOR UPDATE", connection_id
                )
                # Every attempt waits for this lock until the retry's 2 s are up.
                assert await waiting == 503
        finally:
            await other.close()
        assert await _lost_refreshes(broker) == lost + 1
        assert any(
            record.levelname == "ERROR" and "could not be stored" in record.getMessage()
            for record in caplog.records
        )
        row = await db.fetchrow(
            "SELECT status, token_version FROM connections WHERE id = $1", connection_id
        )
        assert (row["status"], row["token_version"]) == ("active", 1)
        assert await db.fetchval(_OPEN_TRANSACTIONS) == 0
