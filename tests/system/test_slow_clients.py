"""Sockets that send nothing, or trickle their headers, are closed; connections
beyond the limit are refused at once and the log says so; the server keeps
answering everyone else (an outside test held 2,000 silent sockets open for
its whole run, and 1,100 of them made `serve` answer nobody)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.support.broker import BrokerHarness
from tests.support.processes import one_serve

TIMEOUT = 1.0
LIMIT = 40


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server closes the socket within ``seconds`` (EOF or reset)."""
    try:
        data = await asyncio.wait_for(reader.read(1024), timeout=seconds)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return data == b"" or data.startswith(b"HTTP/1.1 4")


async def test_silent_slow_and_surplus_sockets_are_closed(
    broker: BrokerHarness, database_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    env = {
        "BROKER_HEADER_TIMEOUT_SECONDS": str(TIMEOUT),
        "BROKER_MAX_CONNECTIONS": str(LIMIT),
    }
    async with one_serve(broker.settings, database_url, log, **env) as (_, url):
        host, port = urlsplit(url).hostname, urlsplit(url).port
        assert host is not None
        assert port is not None
        silent = [await asyncio.open_connection(host, port) for _ in range(LIMIT)]
        await asyncio.sleep(0.2)
        # Beyond the limit: refused at once, and said in the log.
        surplus_reader, surplus_writer = await asyncio.open_connection(host, port)
        assert await _closed_within(surplus_reader, 2.0)
        surplus_writer.close()
        # The silent ones are closed after the header timeout.
        started = time.monotonic()
        closed = await asyncio.gather(*(_closed_within(r, TIMEOUT + 3) for r, _ in silent))
        assert all(closed)
        assert time.monotonic() - started < TIMEOUT + 3
        for _, writer in silent:
            writer.close()
        # Slowloris: a header line every 0.3 s never completes the request.
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        while time.monotonic() - started < TIMEOUT + 3 and not reader.at_eof():
            try:
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.sleep(0.3)
        assert await _closed_within(reader, 1.0)
        writer.close()
        # Everyone else is served.
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            assert (await client.get("/healthz")).status_code == 200
        assert f"connection limit {LIMIT} reached" in log.read_text()
