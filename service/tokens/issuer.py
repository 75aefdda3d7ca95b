"""The refresh path's three entry points: a token read, a forced refresh, and
the proactive refresher's claim. Each ends in one shared flight per
connection (service.tokens.flights) running service.tokens.refresh."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import timedelta

from sqlalchemy import bindparam, func, select

from service.db.engine import read_one
from service.db.models import Connection
from service.tokens.flights import Flights, Presenting
from service.tokens.issued import (
    Ask,
    ConnectionNotFound,
    IssuedToken,
    NeedsReauth,
    UpstreamUnavailable,
)
from service.tokens.parts import TokenParts
from service.tokens.refresh import Refresh

log = logging.getLogger("service.broker")  # pinned: operators filter on it

_VERSION_READ = select(Connection.token_version, Connection.last_refreshed_at, func.now()).where(
    Connection.id == bindparam("connection_id")
)


class TokenIssuer:
    def __init__(self, parts: TokenParts) -> None:
        self._settings = parts.settings
        self._reader = parts.reader
        self.reads = parts.reads
        # The fast path's call: a session from memory with min_ttl left, or None
        # (bound here, not wrapped: it runs on every warm read).
        self.cached_token = parts.reads.cached
        self.presenting = Presenting()
        self.flights = Flights(
            Refresh(parts, self.presenting).run,
            presenting=self.presenting,
            upstream_timeout_seconds=parts.settings.upstream_timeout_seconds,
        )

    async def get_token(
        self, connection_id: uuid.UUID, *, min_ttl: int, cached: bool = True
    ) -> IssuedToken:
        """A session with at least ``min_ttl`` seconds left, refreshing first when needed.

        ``cached=False`` reads the row even when memory holds a session: for a
        caller who must see what another replica may have just stored.
        """
        if cached:
            hit = self.reads.cached(connection_id, min_ttl)
            if hit is not None:
                return hit
            # Concurrent callers of a connection not in memory share one read.
            read = await self.reads.cache.load(
                connection_id, lambda: self.reads.read(connection_id)
            )
        else:
            read = await self.reads.read(connection_id)
        if read is None:
            raise ConnectionNotFound
        if isinstance(read, str):
            raise NeedsReauth
        if read.expires_ts - time.time() >= min_ttl:
            return read
        return await self.flights.join(
            connection_id, Ask(seen_version=read.token_version, min_ttl=min_ttl, forced=False)
        )

    async def force_refresh(self, connection_id: uuid.UUID) -> IssuedToken:
        """Refresh now (the caller saw the session rejected), sharing concurrent refreshes."""
        found = await read_one(self._reader, _VERSION_READ, {"connection_id": connection_id})
        if found is None:
            raise ConnectionNotFound
        version, last_refreshed_at, db_now = found
        debounce = timedelta(seconds=self._settings.force_refresh_debounce_seconds)
        # Both times from the database's clock: replicas' clocks may disagree.
        if last_refreshed_at is not None and db_now - last_refreshed_at < debounce:
            # Refreshed a moment ago (by a caller who saw the same rejection),
            # maybe by another replica: read the row, memory may hold the
            # session this caller saw rejected.
            return await self.get_token(connection_id, min_ttl=0, cached=False)
        return await self.flights.join(
            connection_id, Ask(seen_version=version, min_ttl=0, forced=True)
        )

    async def refresh_claimed(self, connection_id: uuid.UUID, *, seen_version: int) -> None:
        """The refresher's call: refresh unless someone did since the claim read the row.

        Returns once Workfront has answered, not once the answer is stored: the
        refresher's concurrency bounds the refreshes on their way to Workfront,
        while storing (a statement and the durable commit) finishes in the
        flight, which still holds the row lock and its share of the pool (or,
        if that connection failed, stores again on another), and which
        drain() waits for like any other. Its failure is logged here.
        """
        flight = await self.flights.flight(
            connection_id, Ask(seen_version=seen_version, min_ttl=0, forced=True)
        )

        def log_failure(task: asyncio.Task[IssuedToken]) -> None:
            if task.cancelled():
                return
            exc = task.exception()
            if exc is not None and not isinstance(
                exc, ConnectionNotFound | NeedsReauth | UpstreamUnavailable
            ):
                log.error("refresher: refreshing %s failed", connection_id, exc_info=exc)

        flight.task.add_done_callback(log_failure)
        await asyncio.shield(flight.answered)

    async def revalidate_cache(self) -> None:
        await self.reads.revalidate()

    async def drain(self) -> None:
        """Settle refreshes in flight at shutdown (see Flights.drain)."""
        await self.flights.drain()
