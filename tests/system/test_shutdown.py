"""Graceful shutdown of a real `serve` process on SIGTERM.

It stops taking requests, lets a request whose refresh is at Workfront finish
(the rotated token is committed, not lost), gives up a refresh that has not
reached Workfront yet (its row lock is released), and exits in bounded time.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.support.broker import BrokerHarness
from tests.support.db import asyncpg_dsn
from tests.support.processes import one_serve


async def _exit_code(process: subprocess.Popen[bytes], within: float) -> int:
    try:
        return await asyncio.to_thread(process.wait, within)
    except subprocess.TimeoutExpired:
        pytest.fail(f"serve did not exit within {within}s of SIGTERM")


async def _stored_refresh_token(db: asyncpg.Connection, connection_id: uuid.UUID) -> str:
    value: str = await db.fetchval(
        "SELECT refresh_token_enc FROM connections WHERE id = $1", connection_id
    )
    return value


async def test_sigterm_lets_a_refresh_at_workfront_commit_and_refuses_new_requests(
    broker: BrokerHarness, db: asyncpg.Connection, database_url: str, tmp_path: Path
) -> None:
    connection_id = await broker.connect("alice")
    headers = await broker.api_key("tokens:read")
    before = await _stored_refresh_token(db, connection_id)
    async with one_serve(
        broker.settings,
        database_url,
        tmp_path / "serve.log",
        BROKER_FORCE_REFRESH_MIN_INTERVAL_SECONDS="0",
        BROKER_LOG_FORMAT="text",
    ) as (process, url):
        await broker.emulator.configure(latency_ms=1500)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            in_flight = asyncio.create_task(
                client.post(f"/v1/connections/{connection_id}/refresh", headers=headers)
            )
            # Wait until the refresh is at Workfront, then ask the broker to stop.
            deadline = time.monotonic() + 10
            while not [r for r in await broker.emulator.requests() if r.get("refresh_token")]:
                assert time.monotonic() < deadline, "the refresh never reached Workfront"
                await asyncio.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            with pytest.raises(httpx.TransportError):
                await client.get("/healthz")  # no longer accepting
            answered = await in_flight
        assert answered.status_code == 200, answered.text
        assert await _exit_code(process, within=20) == 0

    # The rotated refresh token was committed: the stored one changed, and it
    # is the one Workfront now accepts (the next refresh works).
    assert await _stored_refresh_token(db, connection_id) != before
    await broker.emulator.configure(latency_ms=0)
    again = await broker.client.post(f"/v1/connections/{connection_id}/refresh", headers=headers)
    assert again.status_code == 200, again.text
    assert answered.json()["session_id"] != again.json()["session_id"]
    assert await broker.emulator.presented_twice() == []
    log_text = (tmp_path / "serve.log").read_text()
    assert "abandoned" not in log_text


async def test_sigterm_gives_up_a_refresh_waiting_for_the_row_in_bounded_time(
    broker: BrokerHarness, db: asyncpg.Connection, database_url: str, tmp_path: Path
) -> None:
    connection_id = await broker.connect("alice")
    headers = await broker.api_key("tokens:read")
    before = await _stored_refresh_token(db, connection_id)
    async with one_serve(
        broker.settings,
        database_url,
        tmp_path / "serve.log",
        BROKER_FORCE_REFRESH_MIN_INTERVAL_SECONDS="0",
        BROKER_LOCK_TIMEOUT_SECONDS="120",
        BROKER_SHUTDOWN_TIMEOUT_SECONDS="1",
    ) as (process, url):
        # The row stays locked elsewhere (a long transaction that does not let
        # go): the refresh cannot claim it and keeps looking.
        dsn, options = asyncpg_dsn(database_url)
        holder = await asyncpg.connect(dsn, **options)
        lock = holder.transaction()
        await lock.start()
        await holder.execute("SELECT 1 FROM connections WHERE id = $1 FOR UPDATE", connection_id)
        try:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                stuck = asyncio.create_task(
                    client.post(f"/v1/connections/{connection_id}/refresh", headers=headers)
                )
                await asyncio.sleep(1.0)  # the refresh is waiting for the row by now
                assert not stuck.done()
                process.send_signal(signal.SIGTERM)
                # Far sooner than the 120 s lock timeout.
                assert await _exit_code(process, within=15) == 0
                # Its request ran out of shutdown time: told to retry elsewhere.
                answer = await stuck
                assert answer.status_code == 503, answer.text
                assert answer.json()["type"].endswith("shutting-down")
                assert answer.headers["retry-after"] == "1"
            # Nothing of it is left: no lock waited for, no claim on the row.
            assert not await db.fetchval(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'"
            )
            assert await db.fetchval(
                "SELECT refresh_lease_owner IS NULL FROM connections WHERE id = $1", connection_id
            )
        finally:
            await lock.rollback()
            await holder.close()
    # Workfront never saw a refresh, and the stored token is untouched.
    assert [r for r in await broker.emulator.requests() if r.get("refresh_token")] == []
    assert await _stored_refresh_token(db, connection_id) == before


async def test_sigusr1_writes_every_task_and_the_broker_goes_on(
    broker: BrokerHarness, database_url: str, tmp_path: Path
) -> None:
    """An operator's view into a process that answers nothing (docs/operations.md)."""
    log = tmp_path / "serve.log"
    async with one_serve(broker.settings, database_url, log) as (process, url):
        process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while "--- end of tasks ---" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            assert (await client.get("/healthz")).status_code == 200
    dump = log.read_text()
    assert "--- SIGUSR1:" in dump
    assert "task refresher" in dump or "task hot-cache" in dump
