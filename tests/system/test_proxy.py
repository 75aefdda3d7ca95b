"""The Workfront proxy, through a real `serve` process and the emulator over
HTTP: calls as the connection's user with a proxy-only key, what crosses in
each direction, one refresh for many callers of a dead session, traversal
that reaches nobody, Workfront's 429 passed on, the per-instance gate, and
50 MB each way with bounded memory."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.support.broker import BrokerHarness, create_client
from tests.support.emulator import refresh_requests
from tests.support.processes import one_serve

API = "/attask/api/v21.0"


def _proxy(connection_id: uuid.UUID, rest: str) -> str:
    return f"/v1/connections/{connection_id}/workfront{API}/{rest}"


async def _api_requests(broker: BrokerHarness) -> list[dict[str, Any]]:
    answer = await broker.emulator.control.get("/__emulator/api-requests")
    requests: list[dict[str, Any]] = answer.json()["requests"]
    return requests


@asynccontextmanager
async def _serving(
    broker: BrokerHarness, database_url: str, tmp_path: Path, **env: str
) -> AsyncIterator[tuple[int, httpx.AsyncClient]]:
    async with (
        one_serve(broker.settings, database_url, tmp_path / "serve.log", **env) as (proc, url),
        httpx.AsyncClient(base_url=url, timeout=60) as client,
    ):
        yield proc.pid, client


async def _proxy_key(broker: BrokerHarness) -> dict[str, str]:
    made = await create_client(broker, "crm-sync", "workfront:proxy")
    return {"Authorization": f"Bearer {made['api_key']}"}


async def test_a_proxy_only_key_calls_workfront_but_never_reads_a_session(
    broker: BrokerHarness, database_url: str, tmp_path: Path
) -> None:
    connection_id = await broker.connect("alice")
    key = await _proxy_key(broker)
    async with _serving(broker, database_url, tmp_path) as (_, client):
        found = await client.get(_proxy(connection_id, "proj/search"), headers=key)
        assert found.status_code == 200, found.text
        assert found.headers["content-type"].startswith("application/json")
        assert next(p["name"] for p in found.json()["data"]) == "Website relaunch"
        made = await client.post(_proxy(connection_id, "task"), json={"name": "Call"}, headers=key)
        task_id = made.json()["data"]["ID"]
        changed = await client.put(
            _proxy(connection_id, f"task/{task_id}"), json={"status": "CPL"}, headers=key
        )
        assert changed.json()["data"] == {**made.json()["data"], "status": "CPL"}
        shown = await client.get(_proxy(connection_id, f"task/{task_id}"), headers=key)
        assert shown.json()["data"]["status"] == "CPL"
        gone = await client.delete(_proxy(connection_id, f"task/{task_id}"), headers=key)
        assert gone.json() == {"data": {"success": True}}
        missing = await client.get(_proxy(connection_id, f"task/{task_id}"), headers=key)
        assert missing.status_code == 404
        assert "error" in missing.json()
        # The session itself stays out of reach of this key.
        token = await client.get(f"/v1/connections/{connection_id}/token", headers=key)
        assert token.status_code == 403
        refresh = await client.post(f"/v1/connections/{connection_id}/refresh", headers=key)
        assert refresh.status_code == 403
        # A key with neither scope, an unknown connection, one that needs re-authorization.
        reader = await create_client(broker, "lister", "connections:read")
        other = await client.get(
            _proxy(connection_id, "proj/search"),
            headers={"Authorization": f"Bearer {reader['api_key']}"},
        )
        assert other.status_code == 403
        unknown = await client.get(_proxy(uuid.uuid4(), "proj/search"), headers=key)
        assert unknown.status_code == 404
        assert unknown.headers["content-type"] == "application/problem+json"
        metrics = (await client.get("/metrics")).text
        assert 'broker_proxy_requests_total{instance="default",method="GET",status="2xx"}' in (
            metrics
        )
        assert 'broker_proxy_requests_total{instance="default",method="GET",status="4xx"}' in (
            metrics
        )
        assert "broker_proxy_upstream_seconds_bucket" in metrics
        log = (tmp_path / "serve.log").read_text()
        assert "/v1/connections/{connection_id}/workfront/attask/api/{rest:path}" in log
        assert str(task_id) not in log  # the route template, never the path or query


async def test_caller_headers_stay_here_and_workfront_cookies_do_not_come_back(
    broker: BrokerHarness, database_url: str, tmp_path: Path
) -> None:
    connection_id = await broker.connect("alice")
    key = await _proxy_key(broker)
    async with _serving(broker, database_url, tmp_path) as (_, client):
        session = (
            await broker.client.get(
                f"/v1/connections/{connection_id}/token",
                headers=await broker.api_key("tokens:read"),
            )
        ).json()["session_id"]
        before = len(await _api_requests(broker))
        answer = await client.get(
            _proxy(connection_id, "proj/search"),
            params={"name": "Q3 campaign", "fields": "status"},
            headers={
                **key,
                "Cookie": "attask=caller-cookie",
                "sessionID": "caller-session",
                "apiKey": "caller-api-key",
                "X-Forwarded-For": "203.0.113.9",
                "Accept": "application/json",
                "Accept-Language": "de",
            },
        )
        assert answer.status_code == 200
        assert [p["name"] for p in answer.json()["data"]] == ["Q3 campaign"]
        assert "set-cookie" not in answer.headers
        (seen,) = (await _api_requests(broker))[before:]
    headers = seen["headers"]
    assert headers["sessionid"] == session
    assert seen["query"] == "name=Q3+campaign&fields=status"
    assert headers["accept"] == "application/json"
    assert headers["accept-language"] == "de"
    for name in ("authorization", "cookie", "apikey", "x-forwarded-for"):
        assert name not in headers, name
    assert key["Authorization"].split()[1] not in str(seen)


async def test_a_dead_session_costs_one_refresh_for_fifty_callers(
    broker: BrokerHarness, database_url: str, tmp_path: Path
) -> None:
    """Both shapes of "session dead": a 401, and an error body with a 200."""
    connection_id = await broker.connect("alice")
    key = await _proxy_key(broker)
    async with _serving(broker, database_url, tmp_path) as (_, client):
        for dead_status in (401, 200):
            await broker.emulator.configure(dead_session_status=dead_status)
            warm = await client.get(_proxy(connection_id, "proj/search"), headers=key)
            assert warm.status_code == 200
            refreshes = len(await refresh_requests(broker.emulator))
            (await broker.emulator.control.post("/__emulator/expire-sessions")).raise_for_status()
            answers = await asyncio.gather(
                *(client.get(_proxy(connection_id, "proj/search"), headers=key) for _ in range(50))
            )
            assert {a.status_code for a in answers} == {200}
            assert all(len(a.json()["data"]) == 3 for a in answers)
            assert len(await refresh_requests(broker.emulator)) == refreshes + 1, dead_status
        metrics = (await client.get("/metrics")).text
        retries = next(
            line for line in metrics.splitlines() if line.startswith("broker_proxy_retries_total{")
        )
        # Each caller that met the dead session sent its call once more (those
        # that came after the refresh had the new session from the start).
        assert 2 <= float(retries.split()[-1]) <= 100
    assert await broker.emulator.presented_twice() == []


async def test_paths_that_would_leave_attask_api_reach_nobody(
    broker: BrokerHarness, database_url: str, tmp_path: Path
) -> None:
    connection_id = await broker.connect("alice")
    key = await _proxy_key(broker)
    base = f"/v1/connections/{connection_id}/workfront"
    attempts = [
        f"{base}/attask/api/../../../oauth2/api/v1/token",
        f"{base}/attask/api/v21.0/../../../integrations/oauth2/api/v1/token",
        f"{base}/attask/api/%2e%2e/%2e%2e/integrations",
        f"{base}/attask/api/%2E%2E%2Fintegrations",
        f"{base}/attask/api/%252e%252e/integrations",
        f"{base}/attask/api/.%2e/x",
        f"{base}/attask/api//evil.example/x",
        f"{base}/attask/api/v21.0//proj/search",
        f"{base}/attask/api/http://evil.example/x",
        f"{base}/attask/api/v21.0\\..\\..\\x",
        f"{base}/attask/api/v21.0%5c..%5cx",
        f"{base}/attask/api/v21.0%2fproj%2fsearch",
        f"{base}/attask/api/v21.0/proj%00/search",
        f"{base}/attask/api/",
        f"{base}/attask/apix/v21.0/proj/search",
        f"{base}/integrations/oauth2/api/v1/token",
        f"{base}/%61ttask/api/v21.0/proj/search",
        f"/v1/connections/{connection_id}/workfront/attask/api/v21.0/proj/search/../../../../x",
    ]
    async with _serving(broker, database_url, tmp_path) as (_, client):
        before = len(await _api_requests(broker))
        tokens_before = len(await broker.emulator.requests())
        url = urlsplit(str(client.base_url))
        for path in attempts:
            # A raw socket: HTTP clients normalize dot segments before sending.
            reader, writer = await asyncio.open_connection(url.hostname, url.port)
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: broker\r\nAuthorization: {key['Authorization']}"
                "\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            status_line = (await reader.readline()).decode()
            writer.close()
            assert status_line.split()[1] == "404", (path, status_line)
        # Sane calls still work.
        ok = await client.get(_proxy(connection_id, "proj/search"), headers=key)
        assert ok.status_code == 200
        assert len(await _api_requests(broker)) == before + 1
        assert len(await broker.emulator.requests()) == tokens_before


async def test_workfronts_429_passes_through_and_the_gate_bounds_each_instance(
    broker: BrokerHarness, database_url: str, tmp_path: Path
) -> None:
    connection_id = await broker.connect("alice")
    key = await _proxy_key(broker)
    env = {
        "BROKER_PROXY_CONCURRENCY": "2",
        "BROKER_PROXY_QUEUE": "3",
        "BROKER_PROXY_QUEUE_TIMEOUT_SECONDS": "30",
    }
    async with _serving(broker, database_url, tmp_path, **env) as (_, client):
        await broker.emulator.control.post(
            "/__emulator/api-faults", json={"faults": [{"status": 429, "retry_after": 7}]}
        )
        limited = await client.get(_proxy(connection_id, "proj/search"), headers=key)
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "7"
        assert limited.json()["error"]["message"] == "injected status 429"  # Workfront's body
        await broker.emulator.configure(api_latency_ms=600)
        answers = await asyncio.gather(
            *(client.get(_proxy(connection_id, "proj/search"), headers=key) for _ in range(10))
        )
        statuses = sorted(a.status_code for a in answers)
        # Two at Workfront, three waiting; the other five told to come back.
        assert statuses == [200] * 5 + [429] * 5, statuses
        busy = next(a for a in answers if a.status_code == 429)
        assert busy.headers["content-type"] == "application/problem+json"
        assert busy.json()["type"].endswith("proxy-busy")
        assert "retry-after" in busy.headers
        assert (await broker.emulator.stats())["api_in_flight_most"] <= 2


async def test_the_queue_wait_is_bounded(
    broker: BrokerHarness, database_url: str, tmp_path: Path
) -> None:
    connection_id = await broker.connect("alice")
    key = await _proxy_key(broker)
    env = {"BROKER_PROXY_CONCURRENCY": "1", "BROKER_PROXY_QUEUE_TIMEOUT_SECONDS": "0.3"}
    async with _serving(broker, database_url, tmp_path, **env) as (_, client):
        await broker.emulator.configure(api_latency_ms=1500)
        first, second = await asyncio.gather(
            client.get(_proxy(connection_id, "proj/search"), headers=key),
            client.get(_proxy(connection_id, "proj/search"), headers=key),
        )
        assert sorted((first.status_code, second.status_code)) == [200, 503]
        waited = first if first.status_code == 503 else second
        assert waited.json()["type"].endswith("proxy-busy")
        assert "retry-after" in waited.headers


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def test_fifty_megabytes_each_way_with_bounded_memory(
    broker: BrokerHarness, database_url: str, tmp_path: Path
) -> None:
    size = 50 * 1024 * 1024
    connection_id = await broker.connect("alice")
    key = await _proxy_key(broker)
    async with _serving(broker, database_url, tmp_path) as (pid, client):
        warm = await client.get(_proxy(connection_id, "proj/search"), headers=key)
        assert warm.status_code == 200
        baseline = _peak_rss_mib(pid)
        received = 0
        async with client.stream(
            "GET", _proxy(connection_id, "proj/export"), params={"bytes": size}, headers=key
        ) as export:
            assert export.status_code == 200
            async for chunk in export.aiter_raw():
                received += len(chunk)
        assert received == size

        digest = hashlib.sha256()

        async def upload() -> AsyncIterator[bytes]:
            block = bytes(range(256)) * 1024
            for _ in range(size // len(block)):
                digest.update(block)
                yield block

        sent = await client.post(
            _proxy(connection_id, "upload"),
            content=upload(),
            headers={**key, "Content-Type": "application/octet-stream"},
        )
        assert sent.status_code == 200, sent.text
        assert sent.json()["data"]["size"] == size
        assert sent.json()["data"]["sha256"] == digest.hexdigest()
        grew = _peak_rss_mib(pid) - baseline
    # Neither body was held: 100 MB went through a process that grew by far less.
    assert grew < 25, f"the serve process's peak memory grew {grew:.0f} MiB"
