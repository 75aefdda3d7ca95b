"""The audit trail (one row per change to a connection or an API client) and
lifecycle events, which also go to the webhook outbox."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from service.clock import now_utc
from service.config import Settings
from service.connections import outbox
from service.db.models import Event


async def record_event(
    db: AsyncSession,
    kind: str,
    *,
    connection_id: uuid.UUID | None = None,
    client_id: uuid.UUID | None = None,
    **detail: Any,
) -> None:
    """Append to the audit trail inside the caller's transaction. Never pass a token."""
    db.add(Event(kind=kind, connection_id=connection_id, client_id=client_id, detail=detail))


async def record_connection_event(
    db: AsyncSession,
    settings: Settings,
    event_type: str,
    *,
    connection_id: uuid.UUID,
    user_id: str,
    external_ref: str | None,
    client_id: uuid.UUID | None = None,
    **detail: Any,
) -> None:
    """A lifecycle change: into the audit trail and the webhook outbox, in the
    caller's transaction, so both exist exactly when the change does."""
    await record_event(db, event_type, connection_id=connection_id, client_id=client_id, **detail)
    await outbox.enqueue(
        db,
        outbox.message(
            settings,
            event_type,
            now_utc(),
            connection_id=connection_id,
            user_id=user_id,
            external_ref=external_ref,
            **detail,
        ),
    )
