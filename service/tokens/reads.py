"""Token reads: a connection's session from memory or from its row.

Sessions are answered from memory (service.hotcache) for less than a second
after their row was read, so a busy connection costs no query per read, and
every replica sees a deletion or ``needs_reauth`` within a second; this
process's own refreshes and deletions update the cache at once. A cached
session is served only when it has the caller's ``min_ttl`` left, so the
cache never decides whether to refresh.
"""

from __future__ import annotations

import logging
import time
import uuid

from sqlalchemy import ARRAY, bindparam, select, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncEngine

from service.config import Settings
from service.crypto import DecryptionError
from service.db.engine import read_all, read_one
from service.db.models import STATUS_ACTIVE, Connection
from service.hotcache import Entry, HotCache
from service.metrics import HOT_CACHE_READS
from service.tokens.issued import IssuedToken
from service.tokens.sealing import TokenSealer
from service.tokens.usage import UsageRecorder

log = logging.getLogger("service.broker")  # pinned: operators filter on it

# Built once: constructing the statement per call costs more than running it.
_TOKEN_READ = select(
    Connection.status,
    Connection.access_token_enc,
    Connection.expires_at,
    Connection.user_id,
    Connection.token_version,
    Connection.last_refreshed_at,
    Connection.instance,
    Connection.brought_by,
).where(Connection.id == bindparam("connection_id"))
_TOKENS_READ = text(
    "SELECT id, status, access_token_enc, expires_at, user_id, token_version,"
    " last_refreshed_at, instance, brought_by"
    " FROM connections WHERE id = ANY(:ids)"
).bindparams(bindparam("ids", type_=ARRAY(UUID(as_uuid=True))))

_REVALIDATION_SLICE = 250
_SESSION_MISSES = HOT_CACHE_READS.labels(cache="sessions", kind="miss")
_SESSION_REVALIDATIONS = HOT_CACHE_READS.labels(cache="sessions", kind="revalidation")

# A read's answer: the session (active rows), the status of a row that is not
# active, or None when there is no such row.
Read = IssuedToken | str | None


class TokenReads:
    def __init__(self, *, settings: Settings, reader: AsyncEngine, sealer: TokenSealer) -> None:
        self._reader = reader
        self._sealer = sealer
        # Decrypted sessions of recently read connections; active rows only.
        self.cache: HotCache[uuid.UUID, IssuedToken] = HotCache(
            seconds=settings.hot_cache_seconds, max_entries=settings.hot_cache_max_entries
        )
        # Which connections are read (the refresher keeps those warm).
        self.usage = UsageRecorder(settings)

    def cached(self, connection_id: uuid.UUID, min_ttl: int) -> IssuedToken | None:
        """A session from memory with at least ``min_ttl`` seconds left, or None."""
        hit = self.cache.get(connection_id)
        if hit is not None and hit.expires_ts - time.time() >= min_ttl:
            return hit
        return None

    async def read(self, connection_id: uuid.UUID) -> Read:
        """The row as a session (cached when active), its status when not active, or None."""
        started, changes = self.cache.read_marker()
        _SESSION_MISSES.inc()
        self.usage.note(connection_id)
        # One indexed read of just these columns, in autocommit (no
        # BEGIN/ROLLBACK round trips), no ORM object.
        found = await read_one(self._reader, _TOKEN_READ, {"connection_id": connection_id})
        if found is None:
            self.cache.drop(connection_id)
            return None
        status, sealed, expires_at, user_id, version, refreshed_at, instance, brought_by = found
        if status != STATUS_ACTIVE:
            self.cache.drop(connection_id)
            return str(status)
        issued = self._sealer.issued_from(
            connection_id, sealed, expires_at, user_id, version, refreshed_at, instance, brought_by
        )
        self.cache.store(connection_id, issued, read_started=started, changes_seen=changes)
        return issued

    def changed_here(self, connection_id: uuid.UUID) -> None:
        """This process changed the row (deleted, re-authorized): forget what memory holds."""
        self.cache.local_change(connection_id)

    def refreshed(self, connection_id: uuid.UUID, issued: IssuedToken) -> None:
        """This process stored (or found) a newer session under the row lock."""
        self.cache.replace(connection_id, issued)

    async def revalidate(self) -> None:
        """Re-read the sessions served in the last rounds (see service.hotcache).

        In slices of a few hundred, one query each: processing one slice's rows
        is quick, so requests are never held up for long.
        """
        served = self.cache.take_served()
        # Reads answered from memory count as use too (noted here, once a
        # round, rather than on the hot path).
        self.usage.note_all(entry.key for entry in served)
        for start in range(0, len(served), _REVALIDATION_SLICE):
            await self._revalidate(served[start : start + _REVALIDATION_SLICE])

    async def _revalidate(self, served: list[Entry[uuid.UUID, IssuedToken]]) -> None:
        started, changes = self.cache.read_marker()
        _SESSION_REVALIDATIONS.inc()
        ids = [entry.key for entry in served]
        rows = await read_all(self._reader, _TOKENS_READ, {"ids": ids})
        by_id = {row[0]: row for row in rows}
        for entry in served:
            seen = entry.value
            row = by_id.get(entry.key)
            fresh: IssuedToken | None = None
            if row is not None and row[1] == STATUS_ACTIVE:
                _, _, sealed, expires_at, user_id, version, refreshed_at, instance, by = row
                if (
                    version == seen.token_version
                    and expires_at == seen.expires_at
                    and by == seen.brought_by
                ):
                    fresh = seen
                else:
                    try:
                        fresh = self._sealer.issued_from(
                            entry.key,
                            sealed,
                            expires_at,
                            user_id,
                            version,
                            refreshed_at,
                            instance,
                            by,
                        )
                    except DecryptionError:
                        # e.g. written under a key this replica lacks (a rollout
                        # in progress): drop it; the request path reports it.
                        log.warning("hot cache: session of %s unreadable; dropped", entry.key)
            self.cache.revalidated(entry, fresh, read_started=started, changes_seen=changes)
