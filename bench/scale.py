"""Benchmark 4: scale and memory with BENCH_CONNECTIONS (100,000) connections.

One `serve` process (production settings) on a database holding 100,000
connections. Resident memory (VmRSS) is sampled: after start, and while wrk
reads tokens over every one of the 100,000 connections (each read a cache miss
at first: the in-memory caches fill to their bound, BROKER_HOT_CACHE_MAX_ENTRIES)
and then over a hot pool of 1,000. Target: <= 250 MB. Then, with the process
stopped: the database size per connection, and the refresher's claim query
(find due work: ``next_refresh_at <= now()``, oldest first, 100 rows, FOR UPDATE
SKIP LOCKED) timed by EXPLAIN ANALYZE in a rolled-back transaction with 1 % of
the rows due; the baseline is the same query with index scans turned off.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time

from common import (
    BrokerConfig,
    api_key,
    fresh_database,
    header,
    pg,
    rss_mb,
    run_wrk,
    seed_connections,
    start_emulator,
    stopping,
    verdict,
)

from service.workers.refresher import CLAIM_DUE

COUNT = int(os.environ.get("BENCH_CONNECTIONS", "100000"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))

# The refresher's own claim query, with its batch and lease as literals.
_CLAIM = "EXPLAIN (ANALYZE, FORMAT JSON)" + CLAIM_DUE.text.replace(":batch", "100").replace(
    ":lease", "60"
).replace(":owner", "1")


def _sample_rss(pid: int, until: float, samples: list[float]) -> None:
    while time.monotonic() < until:
        try:
            samples.append(rss_mb(pid))
        except (OSError, RuntimeError):
            return
        time.sleep(0.2)


def _plan_nodes(plan: dict[str, object]) -> list[str]:
    found = [f"{plan.get('Node Type')} {plan.get('Index Name', '')}".strip()]
    for child in plan.get("Plans", []):  # type: ignore[attr-defined]
        found += _plan_nodes(child)
    return found


async def _claim_median(database_url: str, *, index: bool) -> tuple[float, list[str]]:
    """Median over 15 rolled-back runs of the claim (each its own transaction)."""
    times = []
    nodes: list[str] = []
    for _ in range(15):
        conn = await pg(database_url)
        try:
            tx = conn.transaction()
            await tx.start()
            if not index:
                await conn.execute("SET LOCAL enable_indexscan = off")
                await conn.execute("SET LOCAL enable_bitmapscan = off")
            result = await conn.fetchval(_CLAIM)
            await tx.rollback()
        finally:
            await conn.close()
        plan = __import__("json").loads(result)[0]
        times.append(float(plan["Execution Time"]) + float(plan["Planning Time"]))
        nodes = _plan_nodes(plan["Plan"])
    return statistics.median(times), nodes


async def main() -> None:
    header(f"4. scale and memory: {COUNT} connections in the database, one serve process")
    async with fresh_database() as database_url:
        emulator = await start_emulator(client_id="bench", client_secret="bench-secret-" + "s" * 20)
        with stopping(emulator):
            config = BrokerConfig(database_url, emulator.url)
            started = time.monotonic()
            ids = await seed_connections(config, COUNT)
            print(f"seeded {COUNT} connections in {time.monotonic() - started:.0f} s")
            broker = await config.serve()
            with stopping(broker):
                key = await api_key(broker.url, "tokens:read")
                await asyncio.sleep(2)
                idle = rss_mb(broker.pid)
                samples: list[float] = []
                phases = (
                    ("every connection", [f"/v1/connections/{cid}/token" for cid in ids]),
                    ("hot pool of 1,000", [f"/v1/connections/{cid}/token" for cid in ids[:1000]]),
                )
                rates = []
                for name, paths in phases:
                    sampler = threading.Thread(
                        target=_sample_rss,
                        args=(broker.pid, time.monotonic() + SECONDS + 1, samples),
                    )
                    sampler.start()
                    result = await asyncio.to_thread(
                        run_wrk, broker.url, paths, connections=64, seconds=SECONDS, auth=key,
                        threads=1,
                    )  # fmt: skip
                    sampler.join()
                    rates.append(f"{name}: {result.rate:.0f} req/s, {result.errors} errors")
                    print(
                        f"wrk over {name}: {result.rate:.0f} req/s, p99 {result.pct(99):.1f} ms,"
                        f" errors {result.errors}; RSS so far max {max(samples):.0f} MB"
                    )
                peak = max(samples)
                after = rss_mb(broker.pid)
        conn = await pg(database_url)
        try:
            table = await conn.fetchval("SELECT pg_total_relation_size('connections')")
            heap = await conn.fetchval("SELECT pg_relation_size('connections')")
            indexes = await conn.fetchval("SELECT pg_indexes_size('connections')")
            database = await conn.fetchval("SELECT pg_database_size(current_database())")
            index_names = [
                r[0]
                for r in await conn.fetch(
                    "SELECT indexname FROM pg_indexes WHERE tablename = 'connections'"
                )
            ]
            await conn.execute(
                "UPDATE connections SET next_refresh_at = now() - interval '1 minute'"
                " WHERE id = ANY($1::uuid[])",
                ids[:: max(1, COUNT // (COUNT // 100))][: COUNT // 100],
            )
            await conn.execute("ANALYZE connections")
        finally:
            await conn.close()
        with_index, nodes = await _claim_median(database_url, index=True)
        without_index, seq_nodes = await _claim_median(database_url, index=False)

    print(
        f"RSS: {idle:.0f} MB idle after start, {peak:.0f} MB peak under load, {after:.0f} MB after"
    )
    verdict(
        "scale",
        f"RSS of one serve process, {COUNT} connections, busy hot path <= 250 MB",
        f"{peak:.0f} MB peak ({idle:.0f} MB idle)",
        peak <= 250,
        baseline=f"{idle:.0f} MB idle",
        detail="; ".join(rates),
    )
    per_row = table / COUNT
    verdict(
        "scale",
        "database size per connection (information)",
        f"{per_row:.0f} B per connection (table {heap / 2**20:.1f} MiB + indexes"
        f" {indexes / 2**20:.1f} MiB for {COUNT}; whole database {database / 2**20:.0f} MiB)",
        None,
        baseline="",
    )
    due_index = "ix_connections_due" in index_names
    uses_index = any("ix_connections_due" in node for node in nodes)
    verdict(
        "scale",
        f"refresher finds due work among {COUNT} rows in milliseconds (index)",
        f"{with_index:.2f} ms, plan: {' > '.join(nodes[:4])}",
        due_index and uses_index and with_index < 10,
        baseline=f"{without_index:.1f} ms without the index ({' > '.join(seq_nodes[:4])})",
    )


if __name__ == "__main__":
    asyncio.run(main())
