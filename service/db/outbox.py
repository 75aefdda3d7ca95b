"""The webhook outbox's one writer: connection events for an outside receiver.

A message is written in the same transaction as the change it describes
(through the ORM, or inside the refresh transaction's statement on the
driver, from the column list here), then delivered by service.workers.webhooks.
Bodies carry ids and statuses, never a token.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from service.config import Settings
from service.db.models import WebhookMessage

CONNECTION_CREATED = "connection.created"
CONNECTION_NEEDS_REAUTH = "connection.needs_reauth"
CONNECTION_RECOVERED = "connection.recovered"
CONNECTION_DELETED = "connection.deleted"

# For SQL on the driver: the columns a new message sets, in OutboxMessage.arguments()
# order plus its first attempt (due at once) and count.
DRIVER_INSERT = (
    "INSERT INTO webhook_outbox (id, event_type, payload, created_at, next_attempt_at, attempts)"
)


def payload(
    event_type: str, now: datetime, *, connection_id: uuid.UUID, user_id: str, **data: Any
) -> dict[str, Any]:
    """The JSON body of a webhook message."""
    return {
        "type": event_type,
        "timestamp": now.isoformat(),
        "data": {"connection_id": str(connection_id), "user_id": user_id, **data},
    }


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    id: uuid.UUID
    event_type: str
    payload: dict[str, Any]
    created_at: datetime

    def arguments(self) -> tuple[Any, ...]:
        body = json.dumps(self.payload, separators=(",", ":"))
        return (self.id, self.event_type, body, self.created_at)


def message(
    settings: Settings,
    event_type: str,
    now: datetime,
    *,
    connection_id: uuid.UUID,
    user_id: str,
    **data: Any,
) -> OutboxMessage | None:
    """The message for an event; None without webhooks (nothing is written)."""
    if settings.webhook_url is None:
        return None
    body = payload(event_type, now, connection_id=connection_id, user_id=user_id, **data)
    return OutboxMessage(id=uuid.uuid4(), event_type=event_type, payload=body, created_at=now)


async def enqueue(db: AsyncSession, outbox_message: OutboxMessage | None) -> None:
    """Add the message to the caller's ORM transaction (flushed with it, in order)."""
    if outbox_message is not None:
        db.add(
            WebhookMessage(
                id=outbox_message.id,
                event_type=outbox_message.event_type,
                payload=outbox_message.payload,
                next_attempt_at=outbox_message.created_at,
                attempts=0,
            )
        )
