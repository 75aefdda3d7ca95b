"""Audit events are deleted after BROKER_EVENT_RETENTION_DAYS (service.workers.retention)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg

from service.config import Settings
from service.db.engine import make_database, make_engine
from service.workers.retention import prune_events
from tests.support.broker import running_broker
from tests.support.emulator import Emulator

_INSERT_AGED = """
    INSERT INTO events (kind, detail, at)
    SELECT $1, '{}'::jsonb, now() - make_interval(days => $2) FROM generate_series(1, $3)
"""


async def _kinds(db: asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch("SELECT kind, count(*) AS n FROM events GROUP BY kind")
    return {row["kind"]: row["n"] for row in rows}


async def test_prune_deletes_only_events_past_retention_in_batches(
    clean_db: None, db: asyncpg.Connection, database_url: str
) -> None:
    await db.execute(_INSERT_AGED, "old", 31, 7)
    await db.execute(_INSERT_AGED, "young", 29, 4)
    engine = make_engine(database_url, pool_size=2)
    try:
        # A batch of 3: the 7 old rows take three transactions.
        deleted = await prune_events(make_database(engine), retention_days=30, batch=3)
        assert deleted == 7
        assert await _kinds(db) == {"young": 4}
        assert await prune_events(make_database(engine), retention_days=30) == 0
        assert await _kinds(db) == {"young": 4}
    finally:
        await engine.dispose()


async def test_serve_prunes_at_start_and_zero_keeps_everything(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
) -> None:
    await db.execute(_INSERT_AGED, "ancient", 400, 5)
    async with running_broker(settings_for(event_retention_days=0), emulator) as broker:
        connection_id = await broker.connect("keeper")
        await asyncio.sleep(0.5)
        kinds = await _kinds(db)
        assert kinds["ancient"] == 5  # 0: kept forever
    async with running_broker(settings_for(event_retention_days=365), emulator):
        for _ in range(50):
            kinds = await _kinds(db)
            if "ancient" not in kinds:
                break
            await asyncio.sleep(0.1)
        assert "ancient" not in kinds
        # The connection's own, recent events stay.
        assert (
            await db.fetchval("SELECT count(*) FROM events WHERE connection_id = $1", connection_id)
            >= 1
        )
