"""A kill storm: SIGKILL during forced-refresh traffic, with and without If-Match.

Two real `serve` replicas; eight callers per connection read a session and
use it; now and then Workfront ends the sessions in use, and every caller
that used one sees it rejected, each a little later, and forces a refresh.
Over two sets of connections in turn: first as callers did before
conditional refresh (no If-Match, every forced refresh goes upstream: the
minimum interval is 0 here), then naming the rejected session with If-Match.
Replica 0 is killed with SIGKILL several times in each phase. A refresh in flight at a kill is lost
(Workfront rotated the token, the answer never reached a committed row): every
connection that needs re-authorization afterwards must be explained by a kill
right after its last answered refresh (the one documented window), and with
If-Match a rejected session is refreshed once however many callers saw it, so
there are far fewer refreshes to lose and no more connections lost per kill.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path

import asyncpg
import httpx

from service.crypto import TokenCipher
from tests.support.broker import BrokerHarness
from tests.support.db import seed_connections
from tests.support.processes import serve_env
from tests.support.replicas import Replicas, account_for_losses

CONNECTIONS = 16
CALLERS_PER_CONNECTION = 8
KILLS = 8
PHASE_SECONDS = 20.0


async def _phase(
    replicas: Replicas,
    client: httpx.AsyncClient,
    headers: dict[str, str],
    ids: list[uuid.UUID],
    *,
    conditional: bool,
    rng: random.Random,
) -> list[float]:
    """Forced-refresh traffic on ``ids`` with kills of replica 0; returns the kill times."""
    deadline = time.monotonic() + PHASE_SECONDS
    kills_before = len(replicas.kills)
    # Workfront ends sessions now and then (a logout everywhere, an expiry):
    # every caller that used one sees it rejected, each a little later.
    current: dict[uuid.UUID, str] = {}
    dead: set[str] = set()

    async def session_killer() -> None:
        # Each connection's session ends every 1.5 s on average, independently,
        # so refreshes are spread over time and a kill meets a typical moment.
        while time.monotonic() < deadline:
            await asyncio.sleep(rng.expovariate(len(ids) / 1.5))
            session = current.get(rng.choice(ids))
            if session is not None:
                dead.add(session)

    async def caller(connection_id: uuid.UUID) -> None:
        while time.monotonic() < deadline:
            url = rng.choice(replicas.urls)
            try:
                seen = await client.get(
                    f"{url}/v1/connections/{connection_id}/token", headers=headers
                )
                if seen.status_code != 200:
                    await asyncio.sleep(0.05)
                    continue
                session = seen.json()["session_id"]
                current[connection_id] = session
                await asyncio.sleep(rng.uniform(0.05, 1.0))  # its Workfront calls
                if session not in dead:
                    continue
                forced = {**headers, "If-Match": seen.headers["etag"]} if conditional else headers
                await client.post(f"{url}/v1/connections/{connection_id}/refresh", headers=forced)
            except httpx.TransportError:
                await asyncio.sleep(0.05)  # the replica was killed

    async def killer() -> None:
        await replicas.wait_ready(client, 0)
        for _ in range(KILLS):
            await asyncio.sleep(rng.uniform(0.8, 1.4))
            replicas.kill(0)
            await asyncio.sleep(0.3)
            replicas.start(0)
            await replicas.wait_ready(client, 0)

    await asyncio.gather(
        *(caller(cid) for cid in ids for _ in range(CALLERS_PER_CONNECTION)),
        session_killer(),
        killer(),
    )
    return replicas.kills[kills_before:]


async def test_kill_storm_losses_are_in_the_window_and_fall_with_if_match(
    broker: BrokerHarness, db: asyncpg.Connection, database_url: str, tmp_path: Path
) -> None:
    emulator = broker.emulator
    settings = broker.settings
    # Slow enough that refreshes are in flight when a kill comes.
    await emulator.configure(latency_ms=150)
    ids = await seed_connections(db, emulator, settings, 2 * CONNECTIONS)
    before_ids, after_ids = ids[:CONNECTIONS], ids[CONNECTIONS:]
    env = serve_env(
        database_url,
        settings,
        BROKER_FORCE_REFRESH_MIN_INTERVAL_SECONDS="0",
        BROKER_REFRESHER_ENABLED="false",
        BROKER_LOG_LEVEL="WARNING",
    )
    replicas = Replicas(env, tmp_path, 2)
    rng = random.Random(16)
    async with httpx.AsyncClient(timeout=15) as client:
        for index in range(2):
            replicas.start(index)
        try:
            for index in range(2):
                await replicas.wait_ready(client, index)
            made = await client.post(
                f"{replicas.urls[1]}/v1/clients",
                json={"name": "kill-storm", "scopes": ["tokens:read"]},
                headers=broker.admin,
            )
            headers = {"Authorization": f"Bearer {made.json()['api_key']}"}
            spans = []
            for phase_ids, conditional in ((before_ids, False), (after_ids, True)):
                started = time.time()
                await _phase(replicas, client, headers, phase_ids, conditional=conditional, rng=rng)
                spans.append((started, time.time()))
        finally:
            replicas.stop_all()

    cipher = TokenCipher.from_spec(settings.encryption_keys.get_secret_value())
    requests = await emulator.requests()
    lost: dict[bool, int] = {}
    for conditional, phase_ids in ((False, before_ids), (True, after_ids)):
        rows = await db.fetch("SELECT * FROM connections WHERE id = ANY($1)", phase_ids)
        # Every loss explained by a kill right after Workfront answered.
        _, lost[conditional] = account_for_losses(
            rows, requests, cipher, kills=replicas.kills, lost_tokens=set()
        )
    refreshes = [
        sum(
            1
            for r in requests
            if r.get("grant_type") == "refresh_token" and start <= float(r["at"]) <= end
        )
        for start, end in spans
    ]
    print(
        f"\nkill storm: {KILLS} kills a phase; without If-Match {refreshes[0]} upstream"
        f" refreshes, {lost[False]} connections lost; with If-Match {refreshes[1]},"
        f" {lost[True]} lost"
    )
    # Naming the rejected session cuts the refreshes, so the time connections
    # stand in the window; losses per kill follow it, with a kill's noise (a
    # kill meets whatever is in flight at that instant): seen here 9/2, 8/2,
    # 11/3, and 7/7 once on a machine busy with the rest of the suite.
    assert refreshes[1] < 0.75 * refreshes[0]
    assert lost[True] <= lost[False]
