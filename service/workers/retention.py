"""Audit events are kept for BROKER_EVENT_RETENTION_DAYS, then deleted.

Every refresh writes one (``refresh.succeeded`` or a failure): at 100,000
connections refreshed about every 25 minutes that is millions of rows a day,
so without a bound the table would grow for as long as the broker runs.

Each serve process prunes about once an hour, a batch per transaction. A batch
looks only at the oldest rows by id (the primary key's index): ids and times
rise together, so once the oldest rows are younger than the cutoff the round
is over, without scanning the table for rows that are not there. Only the
rows deleted are locked; replicas pruning at once wait for each other's
batch and then find those rows gone.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import text

from service.db.engine import Database
from service.workers.rounds import run_rounds

log = logging.getLogger("service.retention")  # pinned: operators filter on it

PRUNE_EVERY_SECONDS = 3600.0
PRUNE_BATCH = 10_000

_PRUNE = text(
    """
    WITH oldest AS (SELECT id, at FROM events ORDER BY id LIMIT :batch)
    DELETE FROM events
    WHERE id IN (SELECT id FROM oldest WHERE at < now() - make_interval(days => :days))
    """
)


async def prune_events(database: Database, *, retention_days: int, batch: int = PRUNE_BATCH) -> int:
    """Delete events older than ``retention_days``; returns how many went."""
    deleted = 0
    while True:
        async with database() as db, db.begin():
            result = await db.execute(_PRUNE, {"batch": batch, "days": retention_days})
        gone: int = result.rowcount  # type: ignore[attr-defined]
        deleted += gone
        if gone < batch:
            break
        await asyncio.sleep(0)  # a long backlog does not hold the event loop
    if deleted:
        log.info("event retention: deleted %d events older than %d days", deleted, retention_days)
    return deleted


async def run_retention(database: Database, *, retention_days: int) -> None:
    """The loop: prune about once an hour until cancelled."""

    async def prune() -> bool:
        await prune_events(database, retention_days=retention_days)
        return False

    await run_rounds("event-retention", prune, poll_seconds=PRUNE_EVERY_SECONDS)
