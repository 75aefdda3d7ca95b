"""Connection events for an outside receiver, signed per Standard Webhooks.

Events are written to the ``webhook_outbox`` table in the same transaction as
the change they describe (service.db.outbox), then delivered by a loop in every
serve process (``WebhookDeliverer``) that claims due rows with ``FOR UPDATE
SKIP LOCKED``, so an event survives a restart and a receiver outage, and
replicas never send one twice at once. Bodies carry ids and statuses, never a
token. Signing uses the ``standardwebhooks`` library.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import text
from standardwebhooks import Webhook

from service.clock import now_utc
from service.config import Settings
from service.db.engine import Database
from service.db.models import WebhookMessage
from service.metrics import WEBHOOK_DELIVERIES
from service.workers.rounds import run_rounds

log = logging.getLogger("service.webhooks")  # pinned: operators filter on it

_LEASE_SECONDS = 60.0
DELIVERED_RETENTION_SECONDS = 7 * 86_400
_CLEANUP_EVERY_SECONDS = 3600.0
_CLEANUP = text(
    "DELETE FROM webhook_outbox WHERE delivered_at < now() - make_interval(secs => :keep)"
)
_MAX_BACKOFF_SECONDS = 600.0

_CLAIM = text(
    """
    WITH due AS (
        SELECT id FROM webhook_outbox
        WHERE delivered_at IS NULL AND next_attempt_at <= now()
        ORDER BY created_at
        LIMIT :batch
        FOR UPDATE SKIP LOCKED
    )
    UPDATE webhook_outbox AS w
    SET next_attempt_at = now() + make_interval(secs => :lease), attempts = w.attempts + 1
    FROM due
    WHERE w.id = due.id
    RETURNING w.id, w.payload, w.attempts, w.created_at
    """
)


def make_webhook_client(settings: Settings) -> httpx.AsyncClient:
    """The HTTP client webhooks are posted with (one delivery at a time)."""
    timeout = settings.upstream_timeout_seconds
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        follow_redirects=False,
        headers={"User-Agent": "workfront-token-broker/0.1"},
    )


class WebhookDeliverer:
    def __init__(self, *, settings: Settings, database: Database, http: httpx.AsyncClient) -> None:
        if settings.webhook_url is None or settings.webhook_secret is None:
            raise ValueError("webhooks are not configured")
        self._settings = settings
        self._url = settings.webhook_url
        self._database = database
        self._http = http
        self._signer = Webhook(settings.webhook_secret.get_secret_value())
        self._next_cleanup = 0.0

    async def run(self) -> None:
        async def round_() -> bool:
            return await self.run_once() > 0

        await run_rounds("webhooks", round_, poll_seconds=self._settings.webhook_poll_seconds)

    async def run_once(self) -> int:
        async with self._database() as db, db.begin():
            rows = (await db.execute(_CLAIM, {"batch": 50, "lease": _LEASE_SECONDS})).all()
            if time.monotonic() >= self._next_cleanup:
                # Delivered events are kept a while for inspection, not forever.
                self._next_cleanup = time.monotonic() + _CLEANUP_EVERY_SECONDS
                await db.execute(_CLEANUP, {"keep": DELIVERED_RETENTION_SECONDS})
        await asyncio.gather(*(self._deliver(row.id, row.payload, row.attempts) for row in rows))
        return len(rows)

    def signed_request(
        self, message_id: uuid.UUID, payload: dict[str, Any]
    ) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True)
        now = now_utc()
        webhook_id = f"msg_{message_id.hex}"
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._signer.sign(webhook_id, now, body),
        }
        return body.encode(), headers

    async def _deliver(self, message_id: uuid.UUID, payload: dict[str, Any], attempts: int) -> None:
        body, headers = self.signed_request(message_id, payload)
        error: str | None = None
        try:
            response = await self._http.post(self._url, content=body, headers=headers)
            if not 200 <= response.status_code < 300:
                error = f"receiver answered {response.status_code}"
        except httpx.HTTPError as exc:
            error = f"receiver unreachable ({type(exc).__name__})"
        async with self._database() as db, db.begin():
            message = await db.get(WebhookMessage, message_id, with_for_update=True)
            if message is None:
                return
            if error is None:
                message.delivered_at = now_utc()
                message.next_attempt_at = None
                message.last_error = None
                WEBHOOK_DELIVERIES.labels(outcome="delivered").inc()
                return
            message.last_error = error
            if attempts >= self._settings.webhook_max_attempts:
                message.next_attempt_at = None  # given up; kept for inspection
                WEBHOOK_DELIVERIES.labels(outcome="given_up").inc()
                log.error("webhook %s given up after %d attempts: %s", message_id, attempts, error)
                return
            ceiling = min(_MAX_BACKOFF_SECONDS, 2.0 ** min(attempts, 20))
            delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311
            message.next_attempt_at = now_utc() + timedelta(seconds=delay)
            WEBHOOK_DELIVERIES.labels(outcome="retry").inc()
            log.info("webhook %s not delivered (%s); retry in %.1fs", message_id, error, delay)
