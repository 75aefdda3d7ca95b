"""A connection's lifecycle events: into the audit trail and the webhook
outbox, in the caller's transaction."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from service.clock import now_utc
from service.config import Settings
from service.db import outbox
from service.db.audit import record_event


async def record_connection_event(
    db: AsyncSession,
    settings: Settings,
    event_type: str,
    *,
    connection_id: uuid.UUID,
    user_id: str,
    instance: str,
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
            instance=instance,
            external_ref=external_ref,
            **detail,
        ),
    )
