"""Benchmark 7: many different connections needing a refresh at the same moment.

A morning burst: BENCH_BURST_LIST (100, then 1,000) distinct connections whose
sessions have 30 s left (less than the default min_ttl), each read once by its
own caller at the same moment, against 1 and 3 `serve` replicas (callers spread
round-robin); the emulator answers token requests after BENCH_UPSTREAM_MS
(100 ms). Each caller holds a keep-alive connection, opened and used once
beforehand (the API key known); the clock runs from the first request
written to the last answer read. Targets: the last of 100 within 400 ms and
of 1,000 within 2 s on this 2-core machine, every answer 200 with its own
session, one upstream refresh per connection and no refresh token presented
twice. Also reported: the CPU per refresh (broker processes, and PostgreSQL),
which bounds the rate on this machine, where the emulator and the load
generator share the same two cores. Median of BENCH_BURST_ROUNDS (3) rounds.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import uuid

import httpx
import uvloop
from common import (
    CLIENT_ID,
    CLIENT_SECRET,
    BrokerConfig,
    Caller,
    Proc,
    api_key,
    cpu_seconds,
    fresh_database,
    get_request,
    header,
    open_callers,
    pg,
    postgres_cpu_seconds,
    seed_connections,
    send_all,
    start_emulator,
    stopping,
    verdict,
)

BURSTS = [int(n) for n in os.environ.get("BENCH_BURST_LIST", "100,1000").split(",")]
UPSTREAM_MS = float(os.environ.get("BENCH_UPSTREAM_MS", "100"))
ROUNDS = int(os.environ.get("BENCH_BURST_ROUNDS", "3"))
REPLICA_COUNTS = (1, 3)
TARGET_MS = {100: 400.0, 1000: 2000.0}


async def _needs_refresh(database_url: str, ids: list[uuid.UUID]) -> None:
    """30 s left (< min_ttl 60); then let every cache see it (entries live < 1 s)."""
    conn = await pg(database_url)
    try:
        await conn.execute(
            "UPDATE connections SET expires_at = now() + interval '30 seconds',"
            " last_refreshed_at = now() - interval '1770 seconds' WHERE id = ANY($1)",
            ids,
        )
    finally:
        await conn.close()
    await asyncio.sleep(1.5)


async def _refreshes(control: httpx.AsyncClient) -> tuple[int, int]:
    """(refresh requests the emulator saw, refresh tokens presented twice)."""
    log = (await control.get("/__emulator/requests")).json()["requests"]
    twice = (await control.get("/__emulator/refresh-token-reuse")).json()["presented_twice"]
    return sum(1 for r in log if r.get("grant_type") == "refresh_token"), len(twice)


async def _burst(
    config: BrokerConfig,
    control: httpx.AsyncClient,
    replicas: int,
    ids: list[uuid.UUID],
    warm_id: uuid.UUID,
) -> None:
    count = len(ids)
    procs: list[Proc] = list(
        await asyncio.gather(
            *(config.serve(BROKER_REFRESHER_ENABLED="false") for _ in range(replicas))
        )
    )
    with stopping(*procs):
        key = await api_key(procs[0].url, "tokens:read")
        ports = [int(proc.url.rsplit(":", 1)[1]) for proc in procs]
        warm = get_request(f"/v1/connections/{warm_id}/token", key)
        requests = [get_request(f"/v1/connections/{cid}/token", key) for cid in ids]
        lasts, cpus, pg_cpus, exact = [], [], [], True
        for number in range(1, ROUNDS + 1):
            await _needs_refresh(config.database_url, ids)
            callers: list[Caller] = []
            for n, port in enumerate(ports):
                share = len(range(n, count, replicas))
                callers += await open_callers(port, share)
            # Callers in the order of the ports they were opened on: reorder
            # the requests the same way (round-robin over replicas).
            ordered = [requests[i] for n in range(replicas) for i in range(n, count, replicas)]
            _, statuses, _ = await send_all(callers, warm)
            assert statuses == {200}, statuses
            before = await _refreshes(control)
            cpu_before = sum(cpu_seconds(proc.pid) for proc in procs)
            pg_before = postgres_cpu_seconds()
            latencies, statuses, bodies = await send_all(callers, ordered)
            cpu = sum(cpu_seconds(proc.pid) for proc in procs) - cpu_before
            pg_cpu = postgres_cpu_seconds() - pg_before
            await asyncio.sleep(0.5)  # a late second refresh would land now
            after = await _refreshes(control)
            for caller in callers:
                if caller.transport is not None:
                    caller.transport.close()
            refreshed, twice = after[0] - before[0], after[1]
            ok = statuses == {200} and len(bodies) == count and refreshed == count and not twice
            exact = exact and ok
            last = max(latencies)
            lasts.append(last)
            cpus.append(cpu / count * 1000)
            pg_cpus.append(pg_cpu / count * 1000)
            print(
                f"  {replicas} replica(s), round {number}: {count} answers {sorted(statuses)},"
                f" {len(bodies)} distinct, {refreshed} upstream refreshes, presented twice"
                f" {twice}; p50 {sorted(latencies)[count // 2]:.0f} ms, last {last:.0f} ms;"
                f" CPU per refresh: broker {cpu / count * 1000:.1f} ms,"
                f" PostgreSQL {pg_cpu / count * 1000:.1f} ms"
            )
    last = statistics.median(lasts)
    target = TARGET_MS.get(count)
    verdict(
        "burst",
        f"{count} distinct connections refreshed at once, {replicas} replica(s): last answer"
        + (f" <= {target:.0f} ms" if target else ""),
        f"{last:.0f} ms (broker CPU {statistics.median(cpus):.1f} ms and PostgreSQL"
        f" {statistics.median(pg_cpus):.1f} ms per refresh)",
        None if target is None else last <= target,
    )
    verdict(
        "burst",
        f"{count} at once, {replicas} replica(s): each answered with its own session,"
        " one upstream refresh each, none presented twice",
        "yes" if exact else "no",
        exact,
    )


async def main() -> None:
    header(
        f"7. burst: {'/'.join(map(str, BURSTS))} distinct connections needing a refresh"
        f" at once, upstream {UPSTREAM_MS:.0f} ms, 1 and 3 replicas"
    )
    emulator = await start_emulator(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, latency_ms=UPSTREAM_MS
    )
    with stopping(emulator):
        async with httpx.AsyncClient(base_url=emulator.url, timeout=60) as control:
            for count in BURSTS:
                for replicas in REPLICA_COUNTS:
                    async with fresh_database() as database_url:
                        config = BrokerConfig(database_url, emulator.url)
                        warm_id, *ids = await seed_connections(config, count + 1)
                        await _burst(config, control, replicas, ids, warm_id)


if __name__ == "__main__":
    uvloop.run(main())
