"""Refresh under concurrency: one upstream call, never a refresh token presented twice."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import FrameType

import asyncpg
import pytest

from service.config import Settings
from service.tokens.flights import Flight
from service.tokens.issued import Ask, IssuedToken
from tests.support.broker import BrokerHarness, outlive_hot_cache, running_broker
from tests.support.db import expire_soon
from tests.support.emulator import Emulator, refresh_requests


async def test_fifty_token_requests_share_one_refresh(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    connection_id = await broker.connect("alice")
    headers = await broker.api_key("tokens:read")
    await expire_soon(db, connection_id, 10)
    await broker.emulator.configure(latency_ms=100)
    responses = await asyncio.gather(
        *(
            broker.client.get(f"/v1/connections/{connection_id}/token", headers=headers)
            for _ in range(50)
        )
    )
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["session_id"] for r in responses}) == 1
    assert len(await refresh_requests(broker.emulator)) == 1
    assert await broker.emulator.presented_twice() == []


async def test_fifty_forced_refreshes_share_one_upstream_call(broker: BrokerHarness) -> None:
    connection_id = await broker.connect("alice")
    headers = await broker.api_key("tokens:read")
    await broker.emulator.configure(latency_ms=500)  # all 50 read the version before it ends
    responses = await asyncio.gather(
        *(
            broker.client.post(f"/v1/connections/{connection_id}/refresh", headers=headers)
            for _ in range(50)
        )
    )
    assert {r.status_code for r in responses} == {200}
    assert len(await refresh_requests(broker.emulator)) == 1


async def test_successive_refreshes_present_each_token_once(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    connection_id = await broker.connect("alice")
    headers = await broker.api_key("tokens:read")
    sessions = set()
    for _ in range(5):
        response = await broker.client.post(
            f"/v1/connections/{connection_id}/refresh", headers=headers
        )
        assert response.status_code == 200
        sessions.add(response.json()["session_id"])
    assert len(sessions) == 5
    assert len(await refresh_requests(broker.emulator)) == 5
    assert await broker.emulator.presented_twice() == []
    assert (await broker.emulator.stats())["reuse_detected"] == 0
    version = await db.fetchval(
        "SELECT token_version FROM connections WHERE id = $1", connection_id
    )
    assert version == 6


async def test_caller_going_away_does_not_lose_the_rotated_token(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    connection_id = await broker.connect("alice")
    headers = await broker.api_key("tokens:read")
    await broker.emulator.configure(latency_ms=300)
    call = asyncio.create_task(
        broker.client.post(f"/v1/connections/{connection_id}/refresh", headers=headers)
    )
    # Cancel only once the refresh is really in flight.
    flights = broker.app.state.runtime.tokens.flights._flights
    for _ in range(200):
        if flights:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # The shielded refresh finishes and commits on its own.
    for _ in range(100):
        version = await db.fetchval(
            "SELECT token_version FROM connections WHERE id = $1", connection_id
        )
        if version == 2:
            break
        await asyncio.sleep(0.05)
    assert version == 2
    await broker.emulator.configure(latency_ms=0)
    again = await broker.client.post(f"/v1/connections/{connection_id}/refresh", headers=headers)
    assert again.status_code == 200
    assert await broker.emulator.presented_twice() == []


async def test_transient_failure_serves_the_current_session_while_valid(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    connection_id = await broker.connect("alice")
    headers = await broker.api_key("tokens:read")
    current = (
        await broker.client.get(f"/v1/connections/{connection_id}/token", headers=headers)
    ).json()["session_id"]
    await expire_soon(db, connection_id, 30)
    await outlive_hot_cache()
    await broker.emulator.faults({"kind": "status", "status": 502})
    response = await broker.client.get(f"/v1/connections/{connection_id}/token", headers=headers)
    assert response.status_code == 200
    assert response.json()["session_id"] == current
    row = await db.fetchrow("SELECT * FROM connections WHERE id = $1", connection_id)
    assert row["status"] == "active"
    assert row["refresh_failures"] == 1
    assert "502" in row["last_error"]


async def test_transient_failure_after_expiry_is_503_with_retry_after(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    connection_id = await broker.connect("alice")
    headers = await broker.api_key("tokens:read")
    await expire_soon(db, connection_id, -1)
    await broker.emulator.faults({"kind": "status", "status": 429, "retry_after": 7})
    response = await broker.client.get(f"/v1/connections/{connection_id}/token", headers=headers)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    assert response.headers["content-type"] == "application/problem+json"
    # Retry-After is honoured: callers get 503 without another upstream call.
    again = await broker.client.get(f"/v1/connections/{connection_id}/token", headers=headers)
    assert again.status_code == 503
    assert 6 <= int(again.headers["retry-after"]) <= 10  # backoff, never below Retry-After: 7
    assert len(await refresh_requests(broker.emulator)) == 1
    # Once the wait is over, the grant is intact: the same refresh token succeeds.
    await db.execute("UPDATE connections SET next_refresh_at = now() WHERE id = $1", connection_id)
    retry = await broker.client.get(f"/v1/connections/{connection_id}/token", headers=headers)
    assert retry.status_code == 200
    statuses = [r["status"] for r in await refresh_requests(broker.emulator)]
    assert statuses == [429, 200]


async def test_timeout_is_transient(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
) -> None:
    async with running_broker(settings_for(upstream_timeout_seconds=0.5), emulator) as broker:
        connection_id = await broker.connect("alice")
        headers = await broker.api_key("tokens:read")
        await emulator.configure(hang_seconds=2)
        await emulator.faults({"kind": "timeout"})
        response = await broker.client.post(
            f"/v1/connections/{connection_id}/refresh", headers=headers
        )
        assert response.status_code == 503
        status = await db.fetchval("SELECT status FROM connections WHERE id = $1", connection_id)
        assert status == "active"


@pytest.mark.parametrize("omit", [False, True])
async def test_rotation_off_keeps_the_refresh_token(
    broker: BrokerHarness, db: asyncpg.Connection, omit: bool
) -> None:
    await broker.emulator.configure(rotate_refresh_tokens=False, omit_refresh_token=omit)
    connection_id = await broker.connect("alice")
    headers = await broker.api_key("tokens:read")
    for _ in range(3):
        response = await broker.client.post(
            f"/v1/connections/{connection_id}/refresh", headers=headers
        )
        assert response.status_code == 200, response.text
    presented = {r["refresh_token"] for r in await refresh_requests(broker.emulator)}
    assert len(presented) == 1


async def test_expires_in_positive_is_used(broker: BrokerHarness, db: asyncpg.Connection) -> None:
    await broker.emulator.configure(expires_in=600)
    connection_id = await broker.connect("alice")
    expires_at = await db.fetchval(
        "SELECT expires_at FROM connections WHERE id = $1", connection_id
    )
    assert timedelta(seconds=590) < expires_at - datetime.now(UTC) <= timedelta(seconds=600)


async def test_expires_in_zero_assumes_configured_lifetime(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    connection_id = await broker.connect("alice")
    expires_at = await db.fetchval(
        "SELECT expires_at FROM connections WHERE id = $1", connection_id
    )
    ttl = broker.settings.session_ttl_seconds
    assert timedelta(seconds=ttl - 10) < expires_at - datetime.now(UTC) <= timedelta(seconds=ttl)


async def test_forced_refreshes_without_if_match_go_upstream_once_per_interval(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    db: asyncpg.Connection,
) -> None:
    """A client forcing in a loop (no If-Match) costs one upstream refresh per
    connection per BROKER_FORCE_REFRESH_MIN_INTERVAL_SECONDS, not one per call."""
    assert Settings.model_fields["force_refresh_min_interval_seconds"].default == 1
    interval = 1.0
    settings = settings_for(force_refresh_min_interval_seconds=interval)
    async with running_broker(settings, emulator) as broker:
        connections = [await broker.connect(f"forcing-{n}") for n in range(3)]
        headers = await broker.api_key("tokens:read")
        await db.execute("UPDATE connections SET last_refreshed_at = now() - interval '1 minute'")
        started = time.monotonic()
        calls = 0
        sessions: set[str] = set()
        while time.monotonic() - started < 2.5:
            for connection_id in connections:
                answer = await broker.client.post(
                    f"/v1/connections/{connection_id}/refresh", headers=headers
                )
                assert answer.status_code == 200, answer.text
                sessions.add(answer.json()["session_id"])
                calls += 1
        elapsed = time.monotonic() - started
    refreshes = len(await refresh_requests(emulator))
    assert calls > 30
    # At most one per connection per interval begun (the first one at once).
    assert len(connections) <= refreshes <= len(connections) * (int(elapsed / interval) + 1)
    # Every call was answered with a session one of those refreshes produced.
    assert len(sessions) == refreshes
    assert await emulator.presented_twice() == []


async def test_a_forced_caller_does_not_spin_on_a_flight_that_just_finished(
    broker: BrokerHarness,
) -> None:
    """A flight whose task has finished stays registered until its done
    callback runs, a turn of the event loop later. A forced caller arriving in
    between used to await it again and again without ever yielding: the
    process stopped answering anything (seen in the chaos test as a replica
    whose /healthz timed out). SIGALRM breaks such a spin, failing the test
    instead of hanging it."""
    connection_id = await broker.connect("spin")
    core = broker.app.state.runtime.tokens

    async def finished_refresh() -> IssuedToken:
        token: IssuedToken = await core.get_token(connection_id, min_ttl=0)
        return token

    finished = asyncio.create_task(finished_refresh())
    await finished
    answered = asyncio.get_running_loop().create_future()
    answered.set_result(None)
    # As Flights.flight registers one, minus the callback that would forget it.
    core.flights._flights[connection_id] = Flight(
        task=finished, ask=Ask(seen_version=1, min_ttl=60, forced=False), answered=answered
    )

    def spinning(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError("the forced caller spun without yielding to the event loop")

    previous = signal.signal(signal.SIGALRM, spinning)
    signal.setitimer(signal.ITIMER_REAL, 10)
    try:
        token = await core.force_refresh(connection_id)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert token.token_version == 2  # refreshed anew, not handed the old answer
    assert await broker.emulator.presented_twice() == []
