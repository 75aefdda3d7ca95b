"""Why the Workfront client uses aiohttp: CPU per token request, httpx vs aiohttp.

Both clients POST the broker's refresh request (JSON body, Basic auth) to the
emulator's token endpoint (latency BENCH_UPSTREAM_MS, 50 ms) with C requests
in flight, C in BENCH_CONCURRENCY_LIST, from this one process; the CPU this
process spends per request is the client's cost. The emulator answers 400 to
the made-up refresh token, after the same latency, with a body of about the
same size as a real answer. httpx gets a pool per 8 requests in flight (its
pool scans every connection per request, so one big pool costs more).
Informational: no target, so no verdict.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import resource
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
from common import header, start_emulator, stopping

from service.workfront import TOKEN_PATH

UPSTREAM_MS = float(os.environ.get("BENCH_UPSTREAM_MS", "50"))
CONCURRENCIES = [int(c) for c in os.environ.get("BENCH_CONCURRENCY_LIST", "8,16,32").split(",")]
REQUESTS = int(os.environ.get("BENCH_HTTP_REQUESTS", "3000"))
CLIENT_ID, CLIENT_SECRET = "bench", "bench-secret-" + "s" * 20
BODY = json.dumps({"grant_type": "refresh_token", "refresh_token": "r" * 64}).encode()
AUTH = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
HEADERS = {"Authorization": AUTH, "Content-Type": "application/json"}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(concurrency: int, call: Callable[[], Awaitable[int]]) -> tuple[float, float]:
    """(CPU microseconds per request, requests/s) over REQUESTS calls, after a warm-up."""
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            if await call() != 400:
                raise RuntimeError("the emulator should refuse the made-up refresh token")

    await asyncio.gather(*(one() for _ in range(2 * concurrency)))
    cpu, started = _cpu(), time.monotonic()
    await asyncio.gather(*(one() for _ in range(REQUESTS)))
    return (_cpu() - cpu) * 1e6 / REQUESTS, REQUESTS / (time.monotonic() - started)


async def _httpx(url: str, concurrency: int) -> tuple[float, float]:
    clients = [httpx.AsyncClient() for _ in range(max(1, concurrency // 8))]
    lanes = itertools.cycle(clients)

    async def call() -> int:
        response = await next(lanes).post(url, content=BODY, headers=HEADERS)
        response.json()
        return response.status_code

    try:
        return await _measure(concurrency, call)
    finally:
        for client in clients:
            await client.aclose()


async def _aiohttp(url: str, concurrency: int) -> tuple[float, float]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:

        async def call() -> int:
            async with session.post(url, data=BODY, headers=HEADERS) as response:
                json.loads(await response.read())
                return response.status

        return await _measure(concurrency, call)


async def main() -> None:
    header(f"HTTP client cost per token request (upstream {UPSTREAM_MS:.0f} ms), informational")
    emulator = await start_emulator(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, latency_ms=UPSTREAM_MS
    )
    with stopping(emulator):
        url = f"{emulator.url}{TOKEN_PATH}"
        for concurrency in CONCURRENCIES:
            for name, run in (("httpx", _httpx), ("aiohttp", _aiohttp)):
                cpu, rate = await run(url, concurrency)
                line = f"C={concurrency:<3} {name:7} {cpu:5.0f} us CPU per request"
                print(f"{line}, {rate:4.0f} req/s")


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
