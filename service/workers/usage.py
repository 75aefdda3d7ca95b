"""Writes down which connections this process served (service.tokens.usage)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from service.tokens.usage import UsageRecorder
from service.workers.rounds import run_rounds


async def run_usage_recording(
    usage: UsageRecorder, reader: AsyncEngine, *, flush_seconds: float
) -> None:
    async def flush() -> bool:
        await usage.flush(reader)
        return False

    try:
        await run_rounds("usage", flush, poll_seconds=flush_seconds)
    finally:
        # At shutdown, what the last round did not write yet (best effort:
        # a connection noted as idle too early only pays one refresh).
        try:
            await usage.flush(reader)
        except Exception:  # noqa: S110 - the database may be what is going away
            pass
