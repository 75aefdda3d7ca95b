"""Encryption key rotation without downtime, and refusing to run without a key in use.

The procedure the operations guide gives: every replica runs with the new key
first and the old one after it; `keys rotate` re-encrypts in batches while the
replicas serve; then the old key is dropped. A broker missing a key that a
stored value still uses refuses to start, and its /readyz says which key.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import httpx

from service.crypto import generate_key
from tests.support.broker import BrokerHarness, make_settings, running_broker
from tests.support.db import seed_connections
from tests.support.processes import free_port, run_cli, serve_env, serve_processes

CONNECTIONS = 1500
BATCH = 100


async def _key_ids_in_use(db: asyncpg.Connection) -> set[str]:
    rows = await db.fetch(
        "SELECT split_part(access_token_enc, ':', 1) AS a, "
        "split_part(refresh_token_enc, ':', 1) AS r FROM connections"
    )
    return {row["a"] for row in rows} | {row["r"] for row in rows}


async def _load(
    url: str, ids: list[uuid.UUID], headers: dict[str, str], stop: asyncio.Event, offset: int
) -> tuple[int, list[str]]:
    """Token reads, one in ten a forced refresh, until told to stop."""
    done, failures = 0, []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        n = offset
        while not stop.is_set():
            connection_id = ids[(n * 7919) % len(ids)]
            n += 1
            if n % 10 == 0:
                answer = await client.post(f"/v1/connections/{connection_id}/refresh")
            else:
                answer = await client.get(f"/v1/connections/{connection_id}/token")
            done += 1
            if answer.status_code != 200:
                failures.append(f"{answer.status_code} {answer.text[:200]}")
    return done, failures


async def test_keys_rotate_under_load_on_two_replicas_then_the_old_key_goes(
    broker: BrokerHarness,
    db: asyncpg.Connection,
    database_url: str,
    encryption_keys: str,
    tmp_path: Path,
) -> None:
    assert encryption_keys.startswith("k1:")
    ids = await seed_connections(db, broker.emulator, broker.settings, CONNECTIONS)
    headers = await broker.api_key("tokens:read")
    new_key = f"k2:{generate_key()}"
    both = f"{new_key},{encryption_keys}"
    assert await _key_ids_in_use(db) == {"k1"}

    # Step 1 (already rolled out): every replica has k2 first, k1 after it.
    env = {"BROKER_ENCRYPTION_KEYS": both, "BROKER_FORCE_REFRESH_MIN_INTERVAL_SECONDS": "0"}
    async with serve_processes(
        2, database_url=database_url, settings=broker.settings, log_dir=tmp_path, extra_env=env
    ) as urls:
        stop = asyncio.Event()
        load = [
            asyncio.create_task(_load(urls[i % 2], ids, headers, stop, offset=i * 100))
            for i in range(6)
        ]
        await asyncio.sleep(0.5)  # the load is running before the rotation starts
        # Step 2: re-encrypt in batches while both replicas serve.
        rotate_env = serve_env(database_url, broker.settings, BROKER_ENCRYPTION_KEYS=both)
        rotated = await asyncio.to_thread(
            run_cli, "keys", "rotate", "--batch-size", str(BATCH), env=rotate_env
        )
        await asyncio.sleep(0.5)
        stop.set()
        outcomes = await asyncio.gather(*load)

    assert rotated.returncode == 0, rotated.stderr
    assert "under the primary key 'k2'" in rotated.stdout
    served = sum(done for done, _ in outcomes)
    failures = [failure for _, found in outcomes for failure in found]
    assert failures == []
    assert served > 100, served
    assert await _key_ids_in_use(db) == {"k2"}
    assert await broker.emulator.presented_twice() == []

    # Step 3: the old key goes. A broker with k2 alone serves every connection.
    only_new = make_settings(database_url, broker.emulator.base_url, new_key)
    async with running_broker(only_new, broker.emulator) as after:
        reader = await after.api_key("tokens:read")
        for connection_id in ids[:: CONNECTIONS // 20]:
            answer = await after.client.get(
                f"/v1/connections/{connection_id}/token", headers=reader
            )
            assert answer.status_code == 200, answer.text
        assert (await after.client.get("/readyz")).json()["status"] == "ok"

    # A broker still configured with k1 alone is not ready, and names the key it lacks...
    only_old = make_settings(database_url, broker.emulator.base_url, encryption_keys)
    async with running_broker(only_old, broker.emulator) as stale:
        ready = await stale.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {
            "status": "unavailable",
            "reason": "encryption key missing",
            "key_ids": ["k2"],
        }
    # ...and `serve` with it refuses to start, in one line naming the key id only.
    refused = await asyncio.to_thread(
        run_cli,
        "serve",
        "--port",
        str(free_port()),
        env=serve_env(database_url, broker.settings, BROKER_ENCRYPTION_KEYS=encryption_keys),
    )
    assert refused.returncode == 2, refused.stderr
    problems = [line for line in refused.stderr.splitlines() if "configuration error" in line]
    assert len(problems) == 1, refused.stderr
    assert "BROKER_ENCRYPTION_KEYS" in problems[0]
    assert "'k2'" in problems[0]
    assert new_key.partition(":")[2] not in refused.stderr
    assert encryption_keys.partition(":")[2] not in refused.stderr


async def test_keys_rotate_rejects_a_batch_size_below_one(
    broker: BrokerHarness, database_url: str
) -> None:
    result = await asyncio.to_thread(
        run_cli,
        "keys",
        "rotate",
        "--batch-size",
        "0",
        env=serve_env(database_url, broker.settings),
    )
    assert result.returncode == 2
    assert "configuration error: --batch-size: must be at least 1" in result.stderr
