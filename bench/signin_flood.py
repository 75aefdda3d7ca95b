"""Benchmark 8: what an unauthenticated flood of sign-in starts leaves behind.

wrk sends `GET /oauth/authorize` (no cookie, as a new browser each time) for
BENCH_FLOOD_SECONDS (20) over 16 connections to one `serve` process. Reported:
the requests answered, and the rows and bytes the `authorizations` table
holds afterwards. Target: no row, whatever the rate (a sign-in in progress is
a signed state, not a row; see docs/security.md).
"""

from __future__ import annotations

import asyncio
import os

from common import (
    BrokerConfig,
    fresh_database,
    header,
    pg,
    run_wrk,
    start_emulator,
    stopping,
    verdict,
)

SECONDS = int(os.environ.get("BENCH_FLOOD_SECONDS", "20"))


async def main() -> None:
    header(f"8. sign-in flood: GET /oauth/authorize for {SECONDS} s, no cookie")
    emulator = await start_emulator(client_id="bench", client_secret="bench-secret-" + "s" * 20)
    with stopping(emulator):
        async with fresh_database() as database_url:
            config = BrokerConfig(database_url, emulator.url)
            broker = await config.serve(BROKER_REFRESHER_ENABLED="false")
            with stopping(broker):
                result = run_wrk(broker.url, ["/oauth/authorize"], connections=16, seconds=SECONDS)
            conn = await pg(database_url)
            try:
                rows = await conn.fetchval("SELECT count(*) FROM authorizations")
                size = await conn.fetchval("SELECT pg_total_relation_size('authorizations')")
            finally:
                await conn.close()
    answered = result.requests
    print(f"  {answered} sign-ins started ({answered / SECONDS:,.0f}/s)")
    verdict(
        "signin_flood",
        f"rows stored by {SECONDS} s of unauthenticated sign-in starts (target 0)",
        f"{rows} rows, {size / 1024:,.0f} KiB with indexes, after {answered:,} starts",
        rows == 0,
    )


if __name__ == "__main__":
    asyncio.run(main())
