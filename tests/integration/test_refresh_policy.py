"""The refresh policy: connections in use are kept warm (refreshed ahead of
expiry), idle ones only kept alive, and a read brings an idle one back.
"Last used" is noted in memory and written in batches, never per read."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import asyncpg

from service.config import Settings
from service.runtime import Runtime
from service.workers.refresher import Refresher
from tests.support.broker import BrokerHarness, outlive_hot_cache, running_broker
from tests.support.emulator import Emulator, refresh_requests

DAY = 86_400


def _policy(settings_for: Callable[..., Settings], **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "keep_warm_seconds": 7 * DAY,
        "keep_alive_seconds": DAY,
        "refresh_jitter_fraction": 0,
        **overrides,
    }
    return settings_for(**values)


def _runtime(broker: BrokerHarness) -> Runtime:
    runtime: Runtime = broker.app.state.runtime
    return runtime


async def _refresher_round(broker: BrokerHarness) -> int:
    runtime = _runtime(broker)
    refresher = Refresher(
        settings=runtime.settings, database=runtime.database, tokens=runtime.tokens
    )
    workers = [asyncio.create_task(refresher._work()) for _ in range(2)]
    try:
        taken = await refresher.run_once()
        # Until every claim was taken and Workfront answered, then until stored.
        await refresher._wait_until(lambda: refresher._queue.empty() and refresher._busy == 0)
        await runtime.tokens.flights.drain()
        return taken
    finally:
        for worker in workers:
            worker.cancel()


async def _age(
    db: asyncpg.Connection, connection_id: uuid.UUID, *, used: float, refreshed: float
) -> None:
    """Last read ``used`` seconds ago, session obtained ``refreshed`` seconds ago
    (and 1800 s long), and due for the refresher now."""
    await db.execute(
        """
        UPDATE connections SET
            last_used_at = now() - make_interval(secs => $2),
            last_refreshed_at = now() - make_interval(secs => $3),
            expires_at = now() - make_interval(secs => $3) + interval '1800 seconds',
            next_refresh_at = now() - interval '1 second'
        WHERE id = $1
        """,
        connection_id,
        used,
        refreshed,
    )


async def _row(db: asyncpg.Connection, connection_id: uuid.UUID) -> asyncpg.Record:
    row: asyncpg.Record = await db.fetchrow(
        "SELECT *, now() AS db_now FROM connections WHERE id = $1", connection_id
    )
    return row


async def test_connections_in_use_are_refreshed_ahead_of_expiry(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
) -> None:
    async with running_broker(_policy(settings_for), emulator) as broker:
        connection_id = await broker.connect("warm")
        await _age(db, connection_id, used=6 * DAY, refreshed=1600)
        assert await _refresher_round(broker) == 1
        assert len(await refresh_requests(emulator)) == 1
        row = await _row(db, connection_id)
        assert row["token_version"] == 2
        # Warm: due again ahead of the new session's expiry (300 s ahead).
        assert row["next_refresh_at"] == row["expires_at"] - timedelta(seconds=300)


async def test_idle_connections_are_only_kept_alive(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
) -> None:
    async with running_broker(_policy(settings_for), emulator) as broker:
        connection_id = await broker.connect("idle")
        # Unread for 8 days, its grant renewed an hour ago: due (ahead of the
        # session's expiry), but nothing to gain. Rescheduled, no upstream call.
        await _age(db, connection_id, used=8 * DAY, refreshed=3600)
        assert await _refresher_round(broker) == 1
        assert await refresh_requests(emulator) == []
        row = await _row(db, connection_id)
        assert row["token_version"] == 1
        assert row["next_refresh_at"] == row["last_refreshed_at"] + timedelta(days=1)

        # A day after its last renewal the grant is kept alive: one refresh,
        # and the next one a day later again (not ahead of the session's expiry).
        await _age(db, connection_id, used=8 * DAY, refreshed=DAY + 60)
        assert await _refresher_round(broker) == 1
        assert len(await refresh_requests(emulator)) == 1
        row = await _row(db, connection_id)
        assert row["token_version"] == 2
        assert row["next_refresh_at"] == row["last_refreshed_at"] + timedelta(days=1)
        assert row["db_now"] - row["last_refreshed_at"] < timedelta(seconds=30)
    assert await emulator.presented_twice() == []


async def test_a_huge_keep_warm_keeps_every_connection_warm(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
) -> None:
    settings = _policy(settings_for, keep_warm_seconds=100 * 365 * DAY)
    async with running_broker(settings, emulator) as broker:
        connection_id = await broker.connect("always-warm")
        await _age(db, connection_id, used=300 * DAY, refreshed=1600)
        assert await _refresher_round(broker) == 1
        assert len(await refresh_requests(emulator)) == 1
        row = await _row(db, connection_id)
        assert row["next_refresh_at"] == row["expires_at"] - timedelta(seconds=300)


async def test_reads_are_noted_in_memory_and_written_in_one_batch(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
) -> None:
    async with running_broker(_policy(settings_for), emulator) as broker:
        connections = [await broker.connect(f"reader-{n}") for n in range(3)]
        headers = await broker.api_key("tokens:read")
        await db.execute("UPDATE connections SET last_used_at = now() - interval '8 days'")
        before = await db.fetchval("SELECT max(last_used_at) FROM connections")
        for _ in range(20):
            for connection_id in connections:
                answer = await broker.client.get(
                    f"/v1/connections/{connection_id}/token", headers=headers
                )
                assert answer.status_code == 200, answer.text
        # Served from memory too: the revalidation round notes those.
        await _runtime(broker).tokens.revalidate_cache()
        # 60 reads wrote nothing yet.
        assert await db.fetchval("SELECT max(last_used_at) FROM connections") == before
        usage = _runtime(broker).tokens.reads.usage
        assert await usage.flush(_runtime(broker).reader) == 3
        used = await db.fetch("SELECT now() - last_used_at AS ago FROM connections")
        assert all(row["ago"] < timedelta(seconds=30) for row in used)
        # Read again at once: not written again (once per granularity).
        for connection_id in connections:
            await broker.client.get(f"/v1/connections/{connection_id}/token", headers=headers)
        assert await usage.flush(_runtime(broker).reader) == 0


async def test_a_read_brings_an_idle_connection_back_to_warm(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
) -> None:
    async with running_broker(_policy(settings_for), emulator) as broker:
        connection_id = await broker.connect("returning")
        headers = await broker.api_key("tokens:read")
        await _age(db, connection_id, used=8 * DAY, refreshed=600)
        await db.execute(
            "UPDATE connections SET next_refresh_at = now() + interval '20 hours' WHERE id = $1",
            connection_id,
        )
        await outlive_hot_cache()
        answer = await broker.client.get(f"/v1/connections/{connection_id}/token", headers=headers)
        assert answer.status_code == 200, answer.text
        assert await refresh_requests(emulator) == []  # its session still had 1200 s
        await _runtime(broker).tokens.reads.usage.flush(_runtime(broker).reader)
        row = await _row(db, connection_id)
        assert row["db_now"] - row["last_used_at"] < timedelta(seconds=30)
        # Warm again: renewed ahead of this session's expiry, not in 20 hours.
        assert row["next_refresh_at"] == row["expires_at"] - timedelta(seconds=300)


async def test_the_first_read_after_idle_pays_one_shared_refresh(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
) -> None:
    async with running_broker(_policy(settings_for), emulator) as broker:
        connection_id = await broker.connect("morning")
        headers = await broker.api_key("tokens:read")
        # Idle for 8 days, its session long expired (kept alive 2 hours ago).
        await _age(db, connection_id, used=8 * DAY, refreshed=7200)
        await outlive_hot_cache()
        await emulator.configure(latency_ms=200)
        answers = await asyncio.gather(
            *(
                broker.client.get(f"/v1/connections/{connection_id}/token", headers=headers)
                for _ in range(20)
            )
        )
        assert {answer.status_code for answer in answers} == {200}
        assert len({answer.json()["session_id"] for answer in answers}) == 1
        assert len(await refresh_requests(emulator)) == 1
        row = await _row(db, connection_id)
        # A caller's refresh is a use: scheduled ahead of expiry, warm.
        assert row["next_refresh_at"] == row["expires_at"] - timedelta(seconds=300)
    assert await emulator.presented_twice() == []


async def _batch_claim(broker: BrokerHarness, connection_id: uuid.UUID) -> tuple[Refresher, Any]:
    """The refresher's batch claim of one due connection (its HeldClaim)."""
    runtime = _runtime(broker)
    refresher = Refresher(
        settings=runtime.settings, database=runtime.database, tokens=runtime.tokens
    )
    claims, _ = await refresher._claim()
    assert [claim.held.row.id for claim in claims] == [connection_id]
    return refresher, claims[0]


async def _refresh_held(broker: BrokerHarness, refresher: Refresher, claim: Any) -> None:
    await refresher._refresh(claim)
    await _runtime(broker).tokens.flights.drain()  # until stored


async def test_a_batch_claim_refreshes_with_no_statement_before_workfront(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
) -> None:
    """The batch claimed and read the row: the worker presents its token at once,
    and stores under that claim (cleared)."""
    async with running_broker(_policy(settings_for), emulator) as broker:
        connection_id = await broker.connect("held")
        await _age(db, connection_id, used=60, refreshed=1700)
        refresher, claim = await _batch_claim(broker, connection_id)
        owner = _runtime(broker).tokens.claims.owner.id
        claimed = await _row(db, connection_id)
        assert (claimed["refresh_lease_owner"], claimed["token_version"]) == (owner, 1)
        await _refresh_held(broker, refresher, claim)
        row = await _row(db, connection_id)
        assert row["token_version"] == 2
        assert row["refresh_lease_owner"] is None
        assert row["refresh_lease_until"] is None
    assert len(await refresh_requests(emulator)) == 1
    assert await emulator.presented_twice() == []


async def test_a_batch_claim_is_not_used_once_this_process_refreshed_since(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
) -> None:
    """An on-demand refresh here after the batch read the row: the row it holds
    is stale, so the worker reads again, finds the newer session, and never
    presents the refresh token that on-demand refresh already used."""
    async with running_broker(_policy(settings_for), emulator) as broker:
        connection_id = await broker.connect("raced")
        headers = await broker.api_key("tokens:read")
        await _age(db, connection_id, used=60, refreshed=1700)
        refresher, claim = await _batch_claim(broker, connection_id)
        forced = await broker.client.post(
            f"/v1/connections/{connection_id}/refresh", headers=headers
        )
        assert forced.status_code == 200
        assert forced.json()["session_version"] == "2"
        await _refresh_held(broker, refresher, claim)
        row = await _row(db, connection_id)
        assert row["token_version"] == 2
        assert row["refresh_lease_owner"] is None
    assert len(await refresh_requests(emulator)) == 1
    assert await emulator.presented_twice() == []


async def test_a_batch_claim_taken_while_a_refresh_was_storing_is_not_used(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
) -> None:
    """The batch claimed the row while an on-demand refresh of this process was
    at Workfront (its claim is this process's too, so the batch takes the row):
    that refresh stores after the batch read the row, and the worker must not
    present the refresh token it read."""
    async with running_broker(_policy(settings_for), emulator) as broker:
        connection_id = await broker.connect("overlap")
        headers = await broker.api_key("tokens:read")
        tokens = _runtime(broker).tokens
        await emulator.configure(latency_ms=800)
        on_demand = asyncio.create_task(
            broker.client.post(f"/v1/connections/{connection_id}/refresh", headers=headers)
        )
        while not tokens.presenting:
            await asyncio.sleep(0.01)
        await db.execute(
            "UPDATE connections SET next_refresh_at = now() - interval '1 second' WHERE id = $1",
            connection_id,
        )
        refresher, claim = await _batch_claim(broker, connection_id)
        assert claim.held.row.token_version == 1
        assert (await on_demand).status_code == 200
        await emulator.configure(latency_ms=0)
        await _refresh_held(broker, refresher, claim)
        row = await _row(db, connection_id)
        assert row["token_version"] == 2
        assert row["refresh_lease_owner"] is None
    assert len(await refresh_requests(emulator)) == 1
    assert await emulator.presented_twice() == []
