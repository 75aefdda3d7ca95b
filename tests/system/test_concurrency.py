"""Refresh under concurrency across processes: real `serve` replicas on one
database share one upstream call, and never present a refresh token twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import httpx

from tests.support.broker import BrokerHarness
from tests.support.db import expire_soon
from tests.support.emulator import refresh_requests
from tests.support.processes import serve_processes


async def test_two_processes_share_one_refresh(
    broker: BrokerHarness,
    db: asyncpg.Connection,
    database_url: str,
    tmp_path: Path,
) -> None:
    connection_id = await broker.connect("alice")
    headers = await broker.api_key("tokens:read")
    async with serve_processes(
        2,
        database_url=database_url,
        settings=broker.settings,
        log_dir=tmp_path,
        # Stragglers of the forced round that arrive after its refresh
        # committed share it too, however the 50 requests spread out.
        extra_env={"BROKER_FORCE_REFRESH_MIN_INTERVAL_SECONDS": "30"},
    ) as urls:
        await expire_soon(db, connection_id, 10)
        await broker.emulator.configure(latency_ms=300)
        async with httpx.AsyncClient(timeout=30) as client:
            responses = await asyncio.gather(
                *(
                    client.get(
                        f"{urls[i % 2]}/v1/connections/{connection_id}/token", headers=headers
                    )
                    for i in range(50)
                )
            )
            assert {r.status_code for r in responses} == {200}
            assert len({r.json()["session_id"] for r in responses}) == 1
            assert len(await refresh_requests(broker.emulator)) == 1

            # Past the forced-refresh minimum interval, so the forced round refreshes.
            await db.execute("UPDATE connections SET last_refreshed_at = now() - interval '1 hour'")
            forced = await asyncio.gather(
                *(
                    client.post(
                        f"{urls[i % 2]}/v1/connections/{connection_id}/refresh", headers=headers
                    )
                    for i in range(50)
                )
            )
            assert {r.status_code for r in forced} == {200}
    assert len(await refresh_requests(broker.emulator)) == 2
    assert await broker.emulator.presented_twice() == []
    assert (await broker.emulator.stats())["reuse_detected"] == 0


async def test_a_token_endpoint_slower_than_the_upstream_timeout_keeps_the_chain(
    broker: BrokerHarness,
    db: asyncpg.Connection,
    database_url: str,
    tmp_path: Path,
) -> None:
    """Workfront's token endpoint answering in 12 s, past the 10 s upstream
    timeout: a refresh waits for it (giving up would lose the rotated token),
    the other replica waits on the row lock, one upstream call serves both."""
    connection_id = await broker.connect("slow")
    headers = await broker.api_key("tokens:read")
    async with serve_processes(
        2, database_url=database_url, settings=broker.settings, log_dir=tmp_path
    ) as urls:
        await expire_soon(db, connection_id, 10)
        await broker.emulator.configure(latency_ms=12_000)
        path = f"/v1/connections/{connection_id}/token"
        async with httpx.AsyncClient(timeout=40) as client:
            first = asyncio.create_task(client.get(f"{urls[0]}{path}", headers=headers))
            await asyncio.sleep(1)  # replica 0 is at Workfront; replica 1 waits on the lock
            second = await client.get(f"{urls[1]}{path}", headers=headers)
            answers = [await first, second]
            assert [answer.status_code for answer in answers] == [200, 200], answers[1].text
            assert answers[0].json() == answers[1].json()
            assert len(await refresh_requests(broker.emulator)) == 1
            # The chain is alive: the next refresh presents the stored (rotated) token.
            await broker.emulator.configure(latency_ms=0)
            forced = await client.post(
                f"{urls[1]}/v1/connections/{connection_id}/refresh",
                headers={**headers, "If-Match": answers[0].headers["etag"]},
            )
            assert forced.status_code == 200, forced.text
    assert len(await refresh_requests(broker.emulator)) == 2
    assert await broker.emulator.presented_twice() == []
    assert (await broker.emulator.stats())["reuse_detected"] == 0
