"""The audit trail's one writer: a row per change to a connection, a sign-in
link or an API client, in the caller's transaction. Never holds a token."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

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
