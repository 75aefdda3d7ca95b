"""The hot path's in-memory caches: fast, yet never wrong for longer than a second.

In one process: warm reads send no SQL and answer as the route would, this
process forgets what it changed at once, memory stays bounded. Across real
replicas: tests/system/test_hot_cache.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
from sqlalchemy import event

from service.config import Settings
from service.hotcache import HotCache
from service.web.schemas import TokenOut
from tests.support.broker import BrokerHarness, running_broker
from tests.support.db import expire_soon
from tests.support.emulator import Emulator


@contextmanager
def counted_statements(broker: BrokerHarness) -> Iterator[list[str]]:
    """Every SQL statement the broker's engine sends while the block runs."""
    engine = broker.app.state.runtime.engine.sync_engine
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(args[2])  # (conn, cursor, statement, parameters, context, executemany)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def test_warm_token_reads_send_no_sql(broker: BrokerHarness) -> None:
    connection_id = await broker.connect("warm")
    headers = await broker.api_key("tokens:read")
    url = f"/v1/connections/{connection_id}/token"
    first = await broker.client.get(url, headers=headers)
    assert first.status_code == 200
    with counted_statements(broker) as statements:
        answers = [await broker.client.get(url, headers=headers) for _ in range(20)]
    assert {a.status_code for a in answers} == {200}
    assert {a.json()["session_id"] for a in answers} == {first.json()["session_id"]}
    assert statements == []


async def test_answer_from_memory_is_the_routes_answer(broker: BrokerHarness) -> None:
    connection_id = await broker.connect("same")
    headers = await broker.api_key("tokens:read")
    url = f"/v1/connections/{connection_id}/token"
    routed = await broker.client.get(url, headers=headers)  # cold: through the route
    remembered = await broker.client.get(url, headers=headers)  # warm: from memory
    assert routed.status_code == remembered.status_code == 200
    assert routed.content == remembered.content
    for name in ("content-type", "content-length"):
        assert routed.headers[name] == remembered.headers[name]
    assert set(TokenOut.model_validate_json(remembered.content).model_dump()) == set(
        remembered.json()
    )


async def test_requests_memory_is_unsure_about_go_to_the_route(broker: BrokerHarness) -> None:
    connection_id = await broker.connect("unsure")
    headers = await broker.api_key("tokens:read")
    url = f"/v1/connections/{connection_id}/token"
    assert (await broker.client.get(url, headers=headers)).status_code == 200  # warm
    for params, status in (
        ({"min_ttl": "abc"}, 422),
        ({"min_ttl": "86401"}, 422),
        ({"min_ttl": "-1"}, 422),
        ({"min_ttl": "0", "other": "x"}, 200),
    ):
        answer = await broker.client.get(url, params=params, headers=headers)
        assert answer.status_code == status, (params, answer.text)
    lower = {"Authorization": headers["Authorization"].replace("Bearer", "bearer")}
    assert (await broker.client.get(url, headers=lower)).status_code == 200
    upper = url.replace(str(connection_id), str(connection_id).upper())
    assert (await broker.client.get(upper, headers=headers)).status_code == 200
    reader = await broker.api_key("connections:read")  # valid key, wrong scope
    assert (await broker.client.get(url, headers=reader)).status_code == 403
    assert (await broker.client.get(url, headers=reader)).status_code == 403


async def test_cached_session_is_not_served_below_min_ttl(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    connection_id = await broker.connect("picky")
    headers = await broker.api_key("tokens:read")
    url = f"/v1/connections/{connection_id}/token"
    await expire_soon(db, connection_id, 1400)  # an 1800 s session, aged 400 s
    warm = await broker.client.get(url, headers=headers)
    # The session in memory has about 1400 s left; asking for more (that a
    # refresh can give) must refresh even though memory holds a session.
    more = await broker.client.get(url, params={"min_ttl": 1450}, headers=headers)
    assert more.status_code == 200
    assert more.json()["session_id"] != warm.json()["session_id"]
    refreshes = [r for r in await broker.emulator.requests() if r["grant_type"] == "refresh_token"]
    assert len(refreshes) == 1
    version = await db.fetchval(
        "SELECT token_version FROM connections WHERE id = $1", connection_id
    )
    assert version == 2


async def test_this_process_serves_its_own_refresh_at_once(broker: BrokerHarness) -> None:
    connection_id = await broker.connect("forced")
    headers = await broker.api_key("tokens:read")
    url = f"/v1/connections/{connection_id}/token"
    old = (await broker.client.get(url, headers=headers)).json()["session_id"]
    forced = await broker.client.post(f"/v1/connections/{connection_id}/refresh", headers=headers)
    new = forced.json()["session_id"]
    assert new != old
    # No wait: the refresh replaced the cached session.
    assert (await broker.client.get(url, headers=headers)).json()["session_id"] == new


async def test_this_process_forgets_a_deleted_connection_at_once(broker: BrokerHarness) -> None:
    connection_id = await broker.connect("gone")
    headers = await broker.api_key("tokens:read", "connections:write")
    url = f"/v1/connections/{connection_id}/token"
    assert (await broker.client.get(url, headers=headers)).status_code == 200
    deleted = await broker.client.delete(f"/v1/connections/{connection_id}", headers=headers)
    assert deleted.status_code == 204
    assert (await broker.client.get(url, headers=headers)).status_code == 404


async def test_memory_stays_bounded(
    clean_db: None, emulator: Emulator, settings_for: Callable[..., Settings]
) -> None:
    async with running_broker(settings_for(hot_cache_max_entries=2), emulator) as broker:
        headers = await broker.api_key("tokens:read")
        ids = [await broker.connect(f"user-{i}") for i in range(4)]
        for connection_id in ids:
            answer = await broker.client.get(
                f"/v1/connections/{connection_id}/token", headers=headers
            )
            assert answer.status_code == 200
        assert len(broker.app.state.runtime.tokens.reads.cache) == 2


async def test_disabled_cache_reads_the_database_every_time(
    clean_db: None, emulator: Emulator, settings_for: Callable[..., Settings]
) -> None:
    async with running_broker(settings_for(hot_cache_seconds=0), emulator) as broker:
        connection_id = await broker.connect("uncached")
        headers = await broker.api_key("tokens:read")
        url = f"/v1/connections/{connection_id}/token"
        assert (await broker.client.get(url, headers=headers)).status_code == 200
        with counted_statements(broker) as statements:
            assert (await broker.client.get(url, headers=headers)).status_code == 200
        assert len(statements) == 2  # the API key, then the row


async def test_a_read_begun_before_a_local_change_is_not_shared_after_it() -> None:
    """A caller arriving after this process replaced a value must not join an older read."""
    cache: HotCache[str, str] = HotCache(seconds=0.9, max_entries=10)
    release = asyncio.Event()

    async def old_read() -> str:
        await release.wait()
        return "read before the change"

    async def new_read() -> str:
        return "read after the change"

    early = asyncio.create_task(cache.load("k", old_read))
    await asyncio.sleep(0)  # the early read is under way
    cache.local_change("k")  # e.g. a refresh this process just committed
    try:
        # Joining the early read would wait for it (forever here): bounded.
        late = await asyncio.wait_for(cache.load("k", new_read), timeout=5)
    finally:
        release.set()
    assert late == "read after the change"
    assert await early == "read before the change"  # its own caller still gets an answer
