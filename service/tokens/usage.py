"""Which connections are in use: noted in memory on every read, written in batches.

The refresher keeps a connection warm (refreshed ahead of expiry) while it is
read, and only keeps an idle one's grant alive (service.tokens.schedule), so it
needs to know when each was last read. A read must not cost a write: reads
note the connection in a set (warm reads from memory are noted from the hot
cache's served entries, once per revalidation round, so the fast path does no
extra work), and a worker (service.workers.usage) writes the set down every
BROKER_USAGE_FLUSH_SECONDS in one statement per slice. ``last_used_at`` need
only be accurate to a small part of the keep-warm window, so a connection is
written at most once per granularity however often it is read.

A connection coming back from idle is made warm in the same statement: its
next refresh moves to the ahead-of-expiry schedule when that is sooner.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from cachetools import TTLCache
from sqlalchemy import ARRAY, bindparam, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncEngine

from service.config import Settings

_SLICE = 1000
# Written again at most this often per connection (and well within the window).
_LONGEST_GRANULARITY_SECONDS = 3600.0
# Bounds the memory of what was written recently; past it, some connections
# are just written a little more often.
_RECENT_MAX = 100_000

_RECORD_USE = text(
    """
    UPDATE connections SET
        last_used_at = now(),
        next_refresh_at = CASE
            WHEN last_used_at < now() - make_interval(secs => :keep_warm)
                AND next_refresh_at IS NOT NULL
            THEN least(next_refresh_at, expires_at - make_interval(secs => :ahead))
            ELSE next_refresh_at
        END
    WHERE id = ANY(:ids) AND last_used_at < now() - make_interval(secs => :granularity)
    """
).bindparams(bindparam("ids", type_=ARRAY(UUID(as_uuid=True))))


def usage_granularity_seconds(keep_warm_seconds: float) -> float:
    return min(_LONGEST_GRANULARITY_SECONDS, keep_warm_seconds / 4)


class UsageRecorder:
    def __init__(self, settings: Settings) -> None:
        self._keep_warm = settings.keep_warm_seconds
        self._ahead = settings.refresh_ahead_seconds
        self._granularity = usage_granularity_seconds(settings.keep_warm_seconds)
        self._pending: set[uuid.UUID] = set()
        self._recent: TTLCache[uuid.UUID, bool] = TTLCache(
            maxsize=_RECENT_MAX, ttl=max(self._granularity, 0.001)
        )

    def note(self, connection_id: uuid.UUID) -> None:
        self._pending.add(connection_id)

    def note_all(self, connection_ids: Iterable[uuid.UUID]) -> None:
        self._pending.update(connection_ids)

    async def flush(self, engine: AsyncEngine) -> int:
        """Write down what was noted since the last flush; returns how many
        connections were sent. On failure they stay noted for the next one."""
        pending, self._pending = self._pending, set()
        ids = [connection_id for connection_id in pending if connection_id not in self._recent]
        for start in range(0, len(ids), _SLICE):
            part = ids[start : start + _SLICE]
            try:
                async with engine.connect() as conn:
                    await conn.execute(
                        _RECORD_USE,
                        {
                            "ids": part,
                            "keep_warm": self._keep_warm,
                            "ahead": self._ahead,
                            "granularity": self._granularity,
                        },
                    )
            except BaseException:
                self._pending.update(ids[start:])
                raise
            for connection_id in part:
                self._recent[connection_id] = True
        return len(ids)
