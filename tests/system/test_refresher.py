"""The proactive refresher across real `serve` replicas: they share the due
connections, each refreshed exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from tests.support.broker import BrokerHarness
from tests.support.db import seed_connections, wait_until
from tests.support.processes import serve_processes


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

        await wait_until(all_refreshed, within=90, what="every connection to be refreshed")
        await asyncio.sleep(1)  # any double refresh would land now
    versions = await db.fetch("SELECT token_version, count(*) FROM connections GROUP BY 1")
    assert [(r[0], r[1]) for r in versions] == [(2, 1000)]
    refreshes = [r for r in await emulator.requests() if r["grant_type"] == "refresh_token"]
    assert len(refreshes) == 1000
    assert {r["status"] for r in refreshes} == {200}
    assert await emulator.presented_twice() == []
    assert (await emulator.stats())["reuse_detected"] == 0
