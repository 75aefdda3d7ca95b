"""A refresh shared by many callers, against one caller's refresh in the same run.

With the emulator answering after BENCH_UPSTREAM_MS (default 100 ms), the
baseline is one forced refresh (one upstream call). Then BENCH_CALLERS (50)
clients force a refresh of the same connection at once. Single-flight and the
row lock should make them share one upstream call, so their latency should
stay close to the single refresh's: the script prints the ratio of the
callers' median latency to the baseline, and how many upstream refreshes the
emulator saw. Run: `.venv/bin/python bench/refresh_shared.py`.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

import httpx
from token_read import running_stack

CALLERS = int(os.environ.get("BENCH_CALLERS", "50"))
UPSTREAM_MS = float(os.environ.get("BENCH_UPSTREAM_MS", "100"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "10"))


async def _refresh_requests(control: httpx.AsyncClient) -> int:
    log = (await control.get("/__emulator/requests")).json()["requests"]
    return sum(1 for r in log if r.get("grant_type") == "refresh_token")


async def main() -> None:
    # Debounce off: every round must really go upstream.
    async with (
        running_stack(BROKER_FORCE_REFRESH_DEBOUNCE_SECONDS="0") as stack,
        httpx.AsyncClient(base_url=stack.emulator_url) as control,
    ):
        await control.patch("/__emulator/settings", json={"latency_ms": UPSTREAM_MS})
        url = f"/v1/connections/{stack.connection_id}/refresh"

        async def timed() -> float:
            started = time.perf_counter()
            response = await stack.client.post(url, headers=stack.headers)
            response.raise_for_status()
            return time.perf_counter() - started

        single = [await timed() for _ in range(ROUNDS)]
        before = await _refresh_requests(control)
        shared: list[float] = []
        for _ in range(ROUNDS):
            shared += await asyncio.gather(*(timed() for _ in range(CALLERS)))
        upstream = await _refresh_requests(control) - before

    base = statistics.median(single)
    many = statistics.median(shared)
    print(f"upstream latency {UPSTREAM_MS:.0f} ms, {ROUNDS} rounds")
    print(f"one caller         p50 {base * 1000:7.1f} ms")
    print(f"{CALLERS} callers at once p50 {many * 1000:7.1f} ms   max {max(shared) * 1000:7.1f} ms")
    print(f"upstream refreshes for {ROUNDS} rounds of {CALLERS} callers: {upstream}")
    print(f"ratio shared/single latency: {many / base:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
