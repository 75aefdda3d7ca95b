"""The refresh path's three entry points: a token read, a forced refresh, and
the proactive refresher's claim. Each ends in one shared flight per
connection (service.tokens.flights) running service.tokens.refresh."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

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
from service.tokens.lease import HeldClaim
from service.tokens.parts import TokenParts
from service.tokens.refresh import Refresh
from service.tokens.schedule import needed_ttl

log = logging.getLogger("service.broker")  # pinned: operators filter on it


def _older(seen: str, version: int) -> bool:
    """Whether a version a caller sent names a session older than ``version``
    (one the broker never issued does not: the row decides)."""
    return seen.isascii() and seen.isdigit() and len(seen) < 19 and int(seen) < version


_VERSION_READ = select(
    Connection.token_version,
    Connection.last_refreshed_at,
    func.now(),
    Connection.instance,
    Connection.brought_by,
).where(Connection.id == bindparam("connection_id"))

# Whether a caller reaches a connection: (instance, brought_by) -> bool
# (service.apikeys.authenticator.Principal.reaches); None: every connection.
Reach = Callable[[str, uuid.UUID | None], bool] | None


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
            refresh_call_ceiling_seconds=parts.settings.refresh_call_ceiling_seconds,
            # The refresher's lease leaves this much for the wait before a
            # refresh starts (service.workers.refresher).
            held_claim_seconds=parts.settings.lock_timeout_seconds,
        )
        self.claims = parts.claims

    async def get_token(
        self, connection_id: uuid.UUID, *, min_ttl: int, cached: bool = True, reach: Reach = None
    ) -> IssuedToken:
        """A session with at least ``min_ttl`` seconds left (see ``needed_ttl``),
        refreshing first when needed.

        ``cached=False`` reads the row even when memory holds a session: for a
        caller who must see what another replica may have just stored.
        ``reach``: a connection outside it is not found, before any refresh.
        """
        if cached:
            hit = self.reads.cache.get(connection_id)
            if hit is not None and hit.expires_ts - time.time() >= self.needed_ttl(hit, min_ttl):
                if reach is not None and not reach(hit.instance, hit.brought_by):
                    raise ConnectionNotFound
                return hit
            # Concurrent callers of a connection not in memory (or whose
            # session there is too old) share one read: another replica may
            # have stored a fresher one.
            read = await self.reads.cache.load(
                connection_id, lambda: self.reads.read(connection_id)
            )
        else:
            read = await self.reads.read(connection_id)
        if read is None:
            raise ConnectionNotFound
        if isinstance(read, str):
            # Not active: reach is checked on the row (it holds no session to say).
            if reach is not None and not await self._reaches(connection_id, reach):
                raise ConnectionNotFound
            raise NeedsReauth
        if reach is not None and not reach(read.instance, read.brought_by):
            raise ConnectionNotFound
        needed = self.needed_ttl(read, min_ttl)
        if read.expires_ts - time.time() >= needed:
            return read
        return await self.flights.join(
            connection_id, Ask(seen_version=read.token_version, min_ttl=needed, forced=False)
        )

    def needed_ttl(self, token: IssuedToken, min_ttl: int) -> float:
        """The life ``token`` must have left for a caller asking ``min_ttl``
        (service.tokens.schedule.needed_ttl): never more than a refresh gives."""
        if token.refreshed_at is not None:
            lifetime = token.expires_ts - token.refreshed_at.timestamp()
        else:
            lifetime = self._settings.session_ttl_seconds
        return needed_ttl(min_ttl, lifetime=lifetime, ahead=self._settings.refresh_ahead_seconds)

    async def _reaches(self, connection_id: uuid.UUID, reach: Callable[..., bool]) -> bool:
        found = await self._version_row(connection_id)
        return found is not None and bool(reach(found[3], found[4]))

    async def _version_row(self, connection_id: uuid.UUID) -> Any:
        return await read_one(self._reader, _VERSION_READ, {"connection_id": connection_id})

    async def force_refresh(
        self,
        connection_id: uuid.UUID,
        *,
        if_match: frozenset[str] | None = None,
        reach: Reach = None,
    ) -> IssuedToken:
        """Refresh now (the caller saw the session rejected), sharing concurrent refreshes.

        ``if_match``: the session versions the caller saw rejected (If-Match).
        The connection is refreshed only while it still holds one of them;
        otherwise its newer session is the answer, with no upstream call.
        Without it, at most one upstream refresh per connection per
        BROKER_FORCE_REFRESH_MIN_INTERVAL_SECONDS.
        """
        found = None
        if reach is not None:
            found = await self._version_row(connection_id)
            if found is None or not reach(found[3], found[4]):
                raise ConnectionNotFound  # before any refresh, and noted as no use
        self.reads.usage.note(connection_id)
        if if_match is not None:
            return await self._refresh_if_current(connection_id, if_match)
        if found is None:  # one read of the row, whether or not reach needed it
            found = await self._version_row(connection_id)
        if found is None:
            raise ConnectionNotFound
        version, last_refreshed_at, db_now, _, _ = found
        interval = timedelta(seconds=self._settings.force_refresh_min_interval_seconds)
        # Both times from the database's clock: replicas' clocks may disagree.
        if last_refreshed_at is not None and db_now - last_refreshed_at < interval:
            # Refreshed a moment ago (by a caller who saw the same rejection),
            # maybe by another replica: read the row, memory may hold the
            # session this caller saw rejected.
            return await self.get_token(connection_id, min_ttl=0, cached=False)
        return await self.flights.join(
            connection_id, Ask(seen_version=version, min_ttl=0, forced=True)
        )

    async def _refresh_if_current(
        self, connection_id: uuid.UUID, versions: frozenset[str]
    ) -> IssuedToken:
        hit = self.reads.cache.get(connection_id)
        if hit is not None and hit.session_version not in versions:
            # Versions only move on: memory holding another one than the
            # rejected ones means a newer session exists. (If memory holds a
            # rejected one, the row may already hold a newer one: read it.)
            if all(_older(seen, hit.token_version) for seen in versions):
                return hit
        # Concurrent callers share one read of the row (another replica may
        # have stored a newer session).
        read = await self.reads.cache.load(connection_id, lambda: self.reads.read(connection_id))
        if read is None:
            raise ConnectionNotFound
        if isinstance(read, str):
            raise NeedsReauth
        if read.session_version not in versions:
            return read
        # Under the row lock the refresh is skipped when the version moved on
        # meanwhile (another caller, maybe on another replica, refreshed).
        return await self.flights.join(
            connection_id, Ask(seen_version=read.token_version, min_ttl=0, forced=True)
        )

    async def refresh_claimed(self, held: HeldClaim) -> None:
        """The refresher's call: refresh a row its batch claimed, unless someone
        did since the batch read it.

        Returns once Workfront has answered, not once the answer is stored: the
        refresher's concurrency bounds the refreshes on their way to Workfront,
        while storing (a statement and the durable commit) finishes in the
        flight, which still holds the claim (or, if that statement failed,
        stores again), and which drain() waits for like any other. Its
        failure is logged here.
        """
        connection_id = held.row.id
        flight = await self.flights.flight(
            connection_id,
            Ask(
                seen_version=held.row.token_version,
                min_ttl=0,
                forced=True,
                proactive=True,
                held=held,
            ),
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
