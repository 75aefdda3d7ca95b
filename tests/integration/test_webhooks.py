"""Webhooks: signed, durable through a receiver outage, never carrying a token."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import pytest
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.config import Settings
from service.web.serving import make_server
from tests.support.broker import BrokerHarness, running_broker
from tests.support.emulator import Emulator
from tests.support.processes import free_port

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


class Receiver:
    def __init__(self) -> None:
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.status = 204

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            self.received.append((body, dict(request.headers)))
            return Response(status_code=self.status)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for body, _ in self.received]


@contextmanager
def serve_receiver(receiver: Receiver, port: int) -> Iterator[None]:
    server = make_server(receiver.app(), host="127.0.0.1", port=port, log_level="warning")
    thread = threading.Thread(target=asyncio.run, args=(server.serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=5)


@pytest.fixture
def hook_port() -> int:
    return free_port()


@pytest.fixture
async def hooked_broker(
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
    hook_port: int,
) -> AsyncIterator[BrokerHarness]:
    settings = settings_for(
        webhook_url=f"http://127.0.0.1:{hook_port}/hook",
        webhook_secret=SECRET,
        webhook_poll_seconds=0.1,
    )
    async with running_broker(settings, emulator) as harness:
        yield harness


async def _wait_for(predicate: Callable[[], bool], within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_lifecycle_events_are_signed_and_carry_no_token(
    hooked_broker: BrokerHarness, hook_port: int, db: asyncpg.Connection
) -> None:
    receiver = Receiver()
    broker = hooked_broker
    with serve_receiver(receiver, hook_port):
        connection_id = await broker.connect("hooked")
        user_id = await db.fetchval("SELECT user_id FROM connections WHERE id = $1", connection_id)
        headers = await broker.api_key("tokens:read", "connections:write")
        session_id = (
            await broker.client.get(f"/v1/connections/{connection_id}/token", headers=headers)
        ).json()["session_id"]
        await broker.emulator.control.post("/__emulator/revoke", json={"user_id": user_id})
        refused = await broker.client.post(
            f"/v1/connections/{connection_id}/refresh", headers=headers
        )
        assert refused.status_code == 409
        await broker.connect("hooked")  # re-authorize: recovered
        deleted = await broker.client.delete(f"/v1/connections/{connection_id}", headers=headers)
        assert deleted.status_code == 204
        await _wait_for(lambda: len(receiver.received) >= 4)

    verifier = Webhook(SECRET)
    types = []
    secrets = {
        session_id,
        *(r["refresh_token"] for r in await broker.emulator.requests() if r["refresh_token"]),
    }
    for body, hdrs in receiver.received:
        payload = verifier.verify(body, hdrs)
        assert hdrs["webhook-signature"].startswith("v1,")
        assert payload["data"]["connection_id"] == str(connection_id)
        assert payload["data"]["user_id"] == user_id
        assert set(payload) == {"type", "timestamp", "data"}
        text = body.decode()
        assert not any(secret in text for secret in secrets if secret)
        types.append(payload["type"])
    assert sorted(types) == sorted(
        [
            "connection.created",
            "connection.needs_reauth",
            "connection.recovered",
            "connection.deleted",
        ]
    )
    # A wrong secret does not verify.
    other = Webhook("whsec_" + base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(WebhookVerificationError):
        other.verify(receiver.received[0][0], receiver.received[0][1])


async def test_events_survive_a_receiver_outage(
    hooked_broker: BrokerHarness, hook_port: int, db: asyncpg.Connection
) -> None:
    # Nobody listens yet: deliveries fail and are retried with backoff.
    await hooked_broker.connect("early")

    async def attempted() -> bool:
        # attempts counts claims; last_error is written once the attempt failed.
        failed = await db.fetchval(
            "SELECT count(*) FROM webhook_outbox WHERE last_error IS NOT NULL"
        )
        return bool(failed)

    deadline = time.monotonic() + 5
    while not await attempted():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    pending = await db.fetchrow("SELECT * FROM webhook_outbox")
    assert pending["delivered_at"] is None
    assert "unreachable" in pending["last_error"]

    receiver = Receiver()
    receiver.status = 503  # up, but failing
    with serve_receiver(receiver, hook_port):
        await _wait_for(lambda: len(receiver.received) >= 1, within=15)
        receiver.status = 204
        # Once the 503 is recorded (so our update is not overwritten), skip the wait.
        deadline = time.monotonic() + 10
        while not await db.fetchval(
            "SELECT count(*) FROM webhook_outbox WHERE last_error LIKE '%503%'"
        ):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await db.execute("UPDATE webhook_outbox SET next_attempt_at = now()")
        await _wait_for(lambda: len(receiver.received) >= 2, within=15)
        await asyncio.sleep(0.3)
    delivered = await db.fetchrow("SELECT * FROM webhook_outbox")
    assert delivered["delivered_at"] is not None
    assert delivered["attempts"] >= 3
    ids = {headers["webhook-id"] for _, headers in receiver.received}
    assert len(ids) == 1  # the same message, retried


async def test_no_outbox_rows_without_webhooks(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    await broker.connect("quiet")
    assert await db.fetchval("SELECT count(*) FROM webhook_outbox") == 0


async def test_old_delivered_events_are_cleaned_up(
    hooked_broker: BrokerHarness, hook_port: int, db: asyncpg.Connection
) -> None:
    receiver = Receiver()
    with serve_receiver(receiver, hook_port):
        await hooked_broker.connect("old")
        await _wait_for(lambda: len(receiver.received) >= 1)
        await asyncio.sleep(0.3)
    await db.execute("UPDATE webhook_outbox SET delivered_at = now() - interval '8 days'")
    pending = await db.fetchval("SELECT count(*) FROM webhook_outbox")
    assert pending == 1
    # A fresh deliverer cleans up on its first round.
    async with running_broker(hooked_broker.settings, hooked_broker.emulator):
        deadline = time.monotonic() + 5
        while await db.fetchval("SELECT count(*) FROM webhook_outbox"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
