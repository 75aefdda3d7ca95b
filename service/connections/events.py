"""The audit trail: one row per change to a connection or an API client."""

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
