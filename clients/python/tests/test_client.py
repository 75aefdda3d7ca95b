"""workfront_broker_client against a real broker and the Workfront emulator."""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
import requests
from workfront_broker_client import (
    BrokerAuth,
    BrokerError,
    BrokerRequestsAuth,
    BrokerUnavailable,
    NeedsReauth,
)

from tests.support.broker import BrokerHarness
from tests.support.emulator import refresh_requests
from tests.support.processes import serve_processes

SEARCH = "/attask/api/v21.0/proj/search"


@dataclass
class Served:
    broker_url: str
    api_key: str
    connection_id: uuid.UUID
    workfront_url: str

    def auth(self, **options: int) -> BrokerAuth:
        return BrokerAuth(self.broker_url, self.api_key, str(self.connection_id), **options)


@pytest.fixture
async def served(broker: BrokerHarness, database_url: str, tmp_path: Path) -> AsyncIterator[Served]:
    connection_id = await broker.connect("client-user")
    key = (await broker.api_key("tokens:read"))["Authorization"].removeprefix("Bearer ")
    async with serve_processes(
        1, database_url=database_url, settings=broker.settings, log_dir=tmp_path
    ) as urls:
        yield Served(urls[0], key, connection_id, broker.emulator.base_url)


async def _broker_calls(served: Served, kind: str) -> float:
    """Token reads ("token") or forced refreshes ("refresh") the broker answered."""
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"{served.broker_url}/metrics")).text
    pattern = re.compile(
        rf'^broker_token_requests_total\{{kind="{kind}",outcome="ok"\}} (\S+)$', re.M
    )
    found = pattern.search(metrics)
    return float(found.group(1)) if found else 0.0


async def _expire_sessions(broker: BrokerHarness) -> None:
    (await broker.emulator.control.post("/__emulator/expire-sessions")).raise_for_status()


async def test_calls_carry_the_session_and_a_rejected_one_is_refreshed_once(
    served: Served, broker: BrokerHarness
) -> None:
    auth = served.auth()
    with httpx.Client(base_url=served.workfront_url, auth=auth) as workfront:
        assert workfront.get(SEARCH).status_code == 200
        assert workfront.get(SEARCH).status_code == 200
        assert await refresh_requests(broker.emulator) == []  # the session was kept
        await _expire_sessions(broker)
        again = workfront.get(SEARCH)
        assert again.status_code == 200
        assert [r.status_code for r in again.history] == [401]  # then the retry
        assert len(await refresh_requests(broker.emulator)) == 1
    auth.close()


async def test_many_tasks_seeing_one_dead_session_cause_one_refresh(
    served: Served, broker: BrokerHarness
) -> None:
    auth = served.auth()
    async with httpx.AsyncClient(base_url=served.workfront_url, auth=auth) as workfront:
        assert (await workfront.get(SEARCH)).status_code == 200
        await _expire_sessions(broker)
        answers = await asyncio.gather(*(workfront.get(SEARCH) for _ in range(30)))
    assert {answer.status_code for answer in answers} == {200}
    assert len(await refresh_requests(broker.emulator)) == 1
    # One broker call for the session, one for its refresh, for 31 Workfront calls.
    assert await _broker_calls(served, "token") == 1
    assert await _broker_calls(served, "refresh") == 1
    await auth.aclose()


async def test_many_threads_share_one_session_and_one_refresh(
    served: Served, broker: BrokerHarness
) -> None:
    auth = served.auth()
    statuses: list[int] = []

    def work() -> None:
        with httpx.Client(base_url=served.workfront_url, auth=auth) as workfront:
            statuses.append(workfront.get(SEARCH).status_code)

    def run_all() -> None:
        threads = [threading.Thread(target=work) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    await asyncio.to_thread(run_all)
    await _expire_sessions(broker)
    await asyncio.to_thread(run_all)
    assert statuses == [200] * 24
    assert len(await refresh_requests(broker.emulator)) == 1
    assert await _broker_calls(served, "token") == 1
    assert await _broker_calls(served, "refresh") == 1
    auth.close()


async def test_an_error_body_with_a_2xx_status_counts_as_a_rejection(
    served: Served, broker: BrokerHarness
) -> None:
    await broker.emulator.configure(dead_session_status=200)
    auth = served.auth()
    with httpx.Client(base_url=served.workfront_url, auth=auth) as workfront:
        assert "data" in workfront.get(SEARCH).json()
        await _expire_sessions(broker)
        answer = workfront.get(SEARCH)
    assert "data" in answer.json(), answer.text
    assert len(await refresh_requests(broker.emulator)) == 1
    auth.close()


async def test_a_body_that_cannot_be_sent_again_is_not_retried_and_says_so(
    served: Served, broker: BrokerHarness
) -> None:
    auth = served.auth()
    with httpx.Client(base_url=served.workfront_url, auth=auth) as workfront:
        made = workfront.post("/attask/api/v21.0/proj", json={"name": "Launch"})
        assert made.json()["data"]["name"] == "Launch"
        await _expire_sessions(broker)

        def stream() -> Iterator[bytes]:
            yield b'{"name": "Streamed"}'

        with pytest.raises(BrokerError, match="cannot be sent again"):
            workfront.post("/attask/api/v21.0/proj", content=stream())
        # A fresh session is ready: sending it again works at once.
        again = workfront.post("/attask/api/v21.0/proj", json={"name": "Streamed"})
        assert again.json()["data"]["name"] == "Streamed"
    assert len(await refresh_requests(broker.emulator)) == 1
    auth.close()


async def test_a_revoked_grant_is_needs_reauth_never_retried(
    served: Served, broker: BrokerHarness
) -> None:
    auth = served.auth()
    with httpx.Client(base_url=served.workfront_url, auth=auth) as workfront:
        user_id = workfront.get("/attask/api/v21.0/session").json()["data"]["userID"]
        await broker.emulator.control.post("/__emulator/revoke", json={"user_id": user_id})
        await _expire_sessions(broker)
        with pytest.raises(NeedsReauth) as raised:
            workfront.get(SEARCH)
    assert raised.value.connection_id == str(served.connection_id)
    assert len(await refresh_requests(broker.emulator)) == 1
    auth.close()


async def test_workfront_unreachable_is_broker_unavailable(
    served: Served, broker: BrokerHarness
) -> None:
    auth = served.auth()
    with httpx.Client(base_url=served.workfront_url, auth=auth) as workfront:
        assert workfront.get(SEARCH).status_code == 200
        await _expire_sessions(broker)
        await broker.emulator.faults({"kind": "status", "status": 503, "retry_after": 7})
        with pytest.raises(BrokerUnavailable) as raised:
            workfront.get(SEARCH)
    assert raised.value.retry_after == 7
    auth.close()


async def test_requests_gets_the_same(served: Served, broker: BrokerHarness) -> None:
    auth = BrokerRequestsAuth(served.broker_url, served.api_key, str(served.connection_id))

    def calls() -> list[int]:
        with requests.Session() as workfront:
            first = workfront.get(served.workfront_url + SEARCH, auth=auth, timeout=10)
            return [first.status_code]

    assert await asyncio.to_thread(calls) == [200]
    await _expire_sessions(broker)

    def after_expiry() -> tuple[int, list[int]]:
        with requests.Session() as workfront:
            answer = workfront.get(served.workfront_url + SEARCH, auth=auth, timeout=10)
            return answer.status_code, [r.status_code for r in answer.history]

    assert await asyncio.to_thread(after_expiry) == (200, [401])
    assert len(await refresh_requests(broker.emulator)) == 1
    auth.close()


async def test_twenty_threads_and_twenty_tasks_share_one_session(
    served: Served, broker: BrokerHarness
) -> None:
    """1,000 Workfront calls from 20 threads and 20 tasks through one BrokerAuth:
    one broker call while the session lives."""
    auth = served.auth()
    sync_statuses: list[int] = []

    def thread_calls() -> None:
        with httpx.Client(base_url=served.workfront_url, auth=auth) as workfront:
            sync_statuses.extend(workfront.get(SEARCH).status_code for _ in range(25))

    def threads() -> None:
        running = [threading.Thread(target=thread_calls) for _ in range(20)]
        for thread in running:
            thread.start()
        for thread in running:
            thread.join()

    async with httpx.AsyncClient(base_url=served.workfront_url, auth=auth) as workfront:

        async def task_calls() -> list[int]:
            return [(await workfront.get(SEARCH)).status_code for _ in range(25)]

        threaded = asyncio.create_task(asyncio.to_thread(threads))
        tasked = await asyncio.gather(*(task_calls() for _ in range(20)))
        await threaded
    assert sync_statuses == [200] * 500
    assert [status for statuses in tasked for status in statuses] == [200] * 500
    assert await _broker_calls(served, "token") == 1
    assert await _broker_calls(served, "refresh") == 0
    assert await refresh_requests(broker.emulator) == []
    await auth.aclose()


@pytest.mark.parametrize("dead_status", [401, 200], ids=["401", "2xx-error-body"])
async def test_a_session_killed_under_fifty_callers_costs_one_refresh(
    served: Served, broker: BrokerHarness, dead_status: int
) -> None:
    await broker.emulator.configure(dead_session_status=dead_status)
    auth = served.auth()
    async with httpx.AsyncClient(base_url=served.workfront_url, auth=auth) as workfront:
        assert "data" in (await workfront.get(SEARCH)).json()
        await _expire_sessions(broker)
        answers = await asyncio.gather(*(workfront.get(SEARCH) for _ in range(50)))
    assert {answer.status_code for answer in answers} == {200}
    assert all(len(answer.json()["data"]) == 3 for answer in answers)
    assert len(await refresh_requests(broker.emulator)) == 1
    assert await _broker_calls(served, "refresh") == 1
    await auth.aclose()


async def test_a_connection_that_needs_reauth_raises_at_once_with_one_broker_call(
    served: Served, broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    await db.execute(
        "UPDATE connections SET status = 'needs_reauth' WHERE id = $1", served.connection_id
    )
    auth = served.auth()
    before = len(await broker.emulator.requests())
    with httpx.Client(base_url=served.workfront_url, auth=auth) as workfront:
        with pytest.raises(NeedsReauth) as raised:
            workfront.get(SEARCH)
    assert raised.value.connection_id == str(served.connection_id)
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"{served.broker_url}/metrics")).text
    calls = re.findall(r'^broker_token_requests_total\{kind="(\w+)",outcome="([\w-]+)"\} (\S+)$',
                       metrics, re.M)  # fmt: skip
    assert sum(float(n) for _, _, n in calls) == 1  # the one token read, answered 409
    assert ("token", "needs-reauth", "1.0") in calls
    assert len(await broker.emulator.requests()) == before  # nothing was refreshed
    auth.close()
