"""The heart of the broker: hand out fresh sessions, refresh them safely.

Rules this module keeps:

* Refreshes of one connection are serialized across every process by a
  ``SELECT … FOR UPDATE`` on its row, held across the upstream call. A waiter
  re-reads the row under the lock and skips the upstream call when the
  ``token_version`` moved (someone else refreshed meanwhile). That
  transaction is service.tokens.transaction (on the driver: the busiest write).
* Inside one process, concurrent callers share one refresh (single-flight),
  and that refresh is shielded from the callers' cancellation: abandoning a
  refresh between Workfront's answer and our commit would lose a rotated token.
* The new refresh token is committed before any caller sees the new session.
  If the locked connection fails after Workfront answered, the new tokens are
  stored again on another connection, unless the row moved on meanwhile.
* A refresh answered with a revoked grant marks the connection
  ``needs_reauth``; that refresh token is never presented again.
* Token reads are answered from memory (service.hotcache) for less than a
  second after the row was read, so a busy connection costs no query per
  read. Every replica therefore sees a deletion or ``needs_reauth`` within a
  second; this process's own refreshes and deletions update the cache at
  once. A cached session is only served when it has the caller's ``min_ttl``
  left, so the cache never decides whether to refresh.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ARRAY, bindparam, delete, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import UUID, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from service.clock import now_utc
from service.config import Settings
from service.connections.events import record_event
from service.crypto import DecryptionError, TokenCipher, row_aad
from service.db.engine import SessionFactory, read_all, read_one
from service.db.errors import is_database_outage, sqlstate
from service.db.models import (
    STATUS_ACTIVE,
    Connection,
    ConnectLink,
    SigninAttempt,
)
from service.hotcache import Entry, HotCache
from service.logs import CONNECTION_ID
from service.metrics import HOT_CACHE_READS, REFRESHES
from service.signin.links import ConnectLinkSpent
from service.tokens.transaction import (
    LockedRow,
    RefreshTransaction,
    RowLockTimeout,
    TokenWrite,
    locked_row,
    store_tokens_again,
)
from service.workers import webhooks
from service.workfront.client import (
    GrantRevokedError,
    TokenSet,
    TransientError,
    WorkfrontClient,
    WorkfrontUser,
)

log = logging.getLogger("service.broker")  # pinned: operators filter on it

ACCESS = "access_token"
REFRESH = "refresh_token"


_VERSION_READ = select(Connection.token_version, Connection.last_refreshed_at, func.now()).where(
    Connection.id == bindparam("connection_id")
)
# Built once: constructing the statement per call costs more than running it.
_TOKEN_READ = select(
    Connection.status,
    Connection.access_token_enc,
    Connection.expires_at,
    Connection.user_id,
    Connection.token_version,
).where(Connection.id == bindparam("connection_id"))
_TOKENS_READ = text(
    "SELECT id, status, access_token_enc, expires_at, user_id, token_version"
    " FROM connections WHERE id = ANY(:ids)"
).bindparams(bindparam("ids", type_=ARRAY(UUID(as_uuid=True))))


_REVALIDATION_SLICE = 250
_SESSION_MISSES = HOT_CACHE_READS.labels(cache="sessions", kind="miss")
_SESSION_REVALIDATIONS = HOT_CACHE_READS.labels(cache="sessions", kind="revalidation")


@dataclass(frozen=True, slots=True)
class _Ask:
    """What a refresh was asked for."""

    seen_version: int  # the token version the caller saw
    min_ttl: int  # seconds of life the caller needs
    forced: bool  # refresh even when the session still has min_ttl left


@dataclass(frozen=True, slots=True)
class _Rotated:
    """Workfront's answer to a refresh, not yet stored: its old refresh token is dead."""

    issued: IssuedToken
    write: TokenWrite


@dataclass(frozen=True, slots=True)
class _Flight:
    """A refresh in progress in this process, and what it was asked for."""

    task: asyncio.Task[IssuedToken]
    ask: _Ask
    # Done once Workfront has answered, or the refresh ended without asking it;
    # what may remain is storing the answer (see refresh_claimed).
    answered: asyncio.Future[None]


class ConnectionNotFound(Exception):
    pass


class NeedsReauth(Exception):
    pass


class RotationStuck(Exception):
    """keys rotate: rows stayed under an old key (a replica still encrypts with it?)."""

    def __init__(self, left: int) -> None:
        super().__init__(left)
        self.left = left


class UpstreamUnavailable(Exception):
    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class IssuedToken:
    connection_id: uuid.UUID
    session_id: str = field(repr=False)
    expires_at: datetime
    user_id: str
    # The row's token_version it came from.
    token_version: int
    # expires_at as a POSIX timestamp: the cache's min_ttl check without
    # datetime arithmetic.
    expires_ts: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "expires_ts", self.expires_at.timestamp())


# serialization failure, deadlock, statement cancelled, lock timeout, read-only
# (a failover in progress): the same statement may succeed a moment later.
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "57014", "55P03", "25006"})


def _worth_storing_again(exc: Exception) -> bool:
    """A database failure (not a bug): storing the same row again may succeed."""
    if is_database_outage(exc):  # TimeoutError included (an OSError)
        return True
    # From the driver (the locked connection) or wrapped by SQLAlchemy (a retry).
    return sqlstate(exc) in _RETRYABLE_SQLSTATES


def _resolve(answered: asyncio.Future[None]) -> None:
    if not answered.done():
        answered.set_result(None)


class Broker:
    def __init__(
        self,
        *,
        settings: Settings,
        sessions: SessionFactory,
        reader: AsyncEngine,
        cipher: TokenCipher,
        workfront: WorkfrontClient,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._reader = reader
        self._cipher = cipher
        self._workfront = workfront
        self._flights: dict[uuid.UUID, _Flight] = {}
        # Refresh tasks that have presented a refresh token and not yet committed.
        self._presenting: set[asyncio.Task[Any]] = set()
        # Decrypted sessions of recently read connections; active rows only.
        self._cache: HotCache[uuid.UUID, IssuedToken] = HotCache(
            seconds=settings.hot_cache_seconds, max_entries=settings.hot_cache_max_entries
        )
        self._refresh_slots = asyncio.Semaphore(max(1, settings.db_pool_size // 2))

    # Encryption helpers ----------------------------------------------------------

    def _seal(self, connection_id: uuid.UUID, column: str, value: str) -> str:
        return self._cipher.encrypt(value, aad=row_aad("connections", connection_id, column))

    def _open(self, row: Connection | LockedRow, column: str) -> str:
        stored = row.access_token_enc if column == ACCESS else row.refresh_token_enc
        return self._cipher.decrypt(stored, aad=row_aad("connections", row.id, column))

    def _issued(self, row: Connection | LockedRow) -> IssuedToken:
        return IssuedToken(
            connection_id=row.id,
            session_id=self._open(row, ACCESS),
            expires_at=row.expires_at,
            user_id=row.user_id,
            token_version=row.token_version,
        )

    # The hot-path cache -------------------------------------------------------------

    def cached_token(self, connection_id: uuid.UUID, min_ttl: int) -> IssuedToken | None:
        """A session from memory with at least ``min_ttl`` seconds left, or None."""
        hit = self._cache.get(connection_id)
        if hit is not None and hit.expires_ts - time.time() >= min_ttl:
            return hit
        return None

    def _issued_from(
        self,
        connection_id: uuid.UUID,
        sealed: str,
        expires_at: datetime,
        user_id: str,
        version: int,
    ) -> IssuedToken:
        return IssuedToken(
            connection_id=connection_id,
            session_id=self._cipher.decrypt(
                sealed, aad=row_aad("connections", connection_id, ACCESS)
            ),
            expires_at=expires_at,
            user_id=user_id,
            token_version=version,
        )

    async def _read_token(self, connection_id: uuid.UUID) -> IssuedToken | str | None:
        """The row as a session (cached when active), its status when not active, or None."""
        started, changes = self._cache.read_marker()
        _SESSION_MISSES.inc()
        # One indexed read of just these columns, in autocommit (no
        # BEGIN/ROLLBACK round trips), no ORM object.
        found = await read_one(self._reader, _TOKEN_READ, {"connection_id": connection_id})
        if found is None:
            self._cache.drop(connection_id)
            return None
        status, sealed, expires_at, user_id, version = found
        if status != STATUS_ACTIVE:
            self._cache.drop(connection_id)
            return str(status)
        issued = self._issued_from(connection_id, sealed, expires_at, user_id, version)
        self._cache.store(connection_id, issued, read_started=started, changes_seen=changes)
        return issued

    async def revalidate_cache(self) -> None:
        """Re-read the sessions served in the last rounds (see service.hotcache).

        In slices of a few hundred, one query each: processing one slice's rows
        takes well under a millisecond, so requests are never held up longer.
        """
        served = self._cache.take_served()
        for start in range(0, len(served), _REVALIDATION_SLICE):
            await self._revalidate(served[start : start + _REVALIDATION_SLICE])

    async def _revalidate(self, served: list[Entry[uuid.UUID, IssuedToken]]) -> None:
        started, changes = self._cache.read_marker()
        _SESSION_REVALIDATIONS.inc()
        ids = [entry.key for entry in served]
        rows = await read_all(self._reader, _TOKENS_READ, {"ids": ids})
        by_id = {row[0]: row for row in rows}
        for entry in served:
            seen = entry.value
            row = by_id.get(entry.key)
            fresh: IssuedToken | None = None
            if row is not None and row[1] == STATUS_ACTIVE:
                _, _, sealed, expires_at, user_id, version = row
                if version == seen.token_version and expires_at == seen.expires_at:
                    fresh = seen
                else:
                    try:
                        fresh = self._issued_from(entry.key, sealed, expires_at, user_id, version)
                    except DecryptionError:
                        # e.g. written under a key this replica lacks (a rollout
                        # in progress): drop it; the request path reports it.
                        log.warning("hot cache: session of %s unreadable; dropped", entry.key)
            self._cache.revalidated(entry, fresh, read_started=started, changes_seen=changes)

    def _next_refresh_at(self, expires_at: datetime) -> datetime:
        """When the refresher should renew: ahead of expiry, jittered earlier."""
        ahead = self._settings.refresh_ahead_seconds
        jitter = random.uniform(0, ahead * self._settings.refresh_jitter_fraction)  # noqa: S311
        return expires_at - timedelta(seconds=ahead + jitter)

    def _retry_at(self, failures: int, retry_after: float | None) -> datetime:
        """Exponential backoff with full jitter, never sooner than Retry-After."""
        settings = self._settings
        ceiling = min(
            settings.retry_max_seconds, settings.retry_base_seconds * 2 ** min(failures, 20)
        )
        delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311
        if retry_after is not None:
            delay = max(delay, retry_after)
        return now_utc() + timedelta(seconds=delay)

    # Reading -----------------------------------------------------------------------

    async def get_token(
        self, connection_id: uuid.UUID, *, min_ttl: int, cached: bool = True
    ) -> IssuedToken:
        """A session with at least ``min_ttl`` seconds left, refreshing first when needed.

        ``cached=False`` reads the row even when memory holds a session: for a
        caller who must see what another replica may have just stored.
        """
        if cached:
            hit = self.cached_token(connection_id, min_ttl)
            if hit is not None:
                return hit
            # Concurrent callers of a connection not in memory share one read.
            read = await self._cache.load(connection_id, lambda: self._read_token(connection_id))
        else:
            read = await self._read_token(connection_id)
        if read is None:
            raise ConnectionNotFound
        if isinstance(read, str):
            raise NeedsReauth
        if read.expires_ts - time.time() >= min_ttl:
            return read
        return await self._join_flight(
            connection_id, _Ask(seen_version=read.token_version, min_ttl=min_ttl, forced=False)
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
        flight = await self._flight(
            connection_id, _Ask(seen_version=seen_version, min_ttl=0, forced=True)
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

    async def drain(self) -> None:
        """Shut down refreshes in flight without losing a refresh token, in bounded time.

        A refresh that has not yet presented its refresh token (waiting for a
        pool slot or the row lock) is cancelled: its transaction rolls back and
        Workfront never saw it. One that has presented it holds the rotated
        token in memory until it commits, so it is waited for, as long as one
        upstream call can take (the Workfront client's ceiling, twice the
        upstream timeout), and only then cancelled.
        """
        for flight in list(self._flights.values()):
            if flight.task not in self._presenting:
                flight.task.cancel()
        waiting = [flight.task for flight in self._flights.values()]
        if not waiting:
            return
        within = 2 * self._settings.upstream_timeout_seconds + 5
        _, late = await asyncio.wait(waiting, timeout=within)
        for task in late:
            log.error("shutdown: a refresh still at Workfront or storing its answer was abandoned")
            task.cancel()
        if late:
            await asyncio.wait(late)

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
        return await self._join_flight(
            connection_id, _Ask(seen_version=version, min_ttl=0, forced=True)
        )

    # Refreshing --------------------------------------------------------------------

    async def _join_flight(self, connection_id: uuid.UUID, ask: _Ask) -> IssuedToken:
        flight = await self._flight(connection_id, ask)
        # shield: a caller that goes away must not cancel a refresh in progress.
        return await asyncio.shield(flight.task)

    async def _flight(self, connection_id: uuid.UUID, ask: _Ask) -> _Flight:
        """The refresh of this connection to join: the one in progress, or a new one."""
        while (flight := self._flights.get(connection_id)) is not None:
            if not ask.forced or (
                flight.ask.forced and flight.ask.seen_version >= ask.seen_version
            ):
                return flight
            # A forced caller saw its session rejected; a flight that may not go
            # upstream (not forced) or that started from an older version could
            # hand that very session back. Let it finish, then refresh anew.
            if flight.task.done():
                # Finished, but its done callback (forget) has not run yet.
                # Awaiting a finished task returns without yielding to the event
                # loop, so this loop would spin forever and the whole process
                # would stop answering. The flight is over: drop it here.
                del self._flights[connection_id]
                continue
            try:
                await asyncio.shield(flight.task)
            except asyncio.CancelledError:
                # That flight was cancelled (drain); this caller was not, unless
                # its own task is being cancelled.
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
            except Exception:  # noqa: S110 - its own callers hear of it
                pass
        answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            self._refresh_locked(connection_id, ask, answered),
            name=f"refresh-{connection_id}",
        )
        flight = _Flight(task=task, ask=ask, answered=answered)
        self._flights[connection_id] = flight

        def forget(_: asyncio.Task[IssuedToken], current: _Flight = flight) -> None:
            if self._flights.get(connection_id) is current:
                del self._flights[connection_id]

        task.add_done_callback(forget)
        # Also when the task is cancelled before it ever ran.
        task.add_done_callback(lambda _: _resolve(answered))
        return flight

    async def _refresh_locked(
        self, connection_id: uuid.UUID, ask: _Ask, answered: asyncio.Future[None]
    ) -> IssuedToken:
        # Its own task (see _flight), so this names the connection in the
        # log lines of this refresh only.
        CONNECTION_ID.set(str(connection_id))
        lock_timeout_ms = int(self._settings.lock_timeout_seconds * 1000)
        rotated: _Rotated | None = None
        try:
            try:
                # A refresh holds a pooled connection across the lock wait and
                # the upstream call; at most half the pool does, so token reads
                # of live sessions keep working while Workfront is slow.
                async with (
                    self._refresh_slots,
                    locked_row(
                        self._reader,
                        connection_id,
                        lock_timeout_ms=lock_timeout_ms,
                        write_timeout=self._settings.upstream_timeout_seconds,
                    ) as (tx, row),
                ):
                    outcome = await self._refresh_row(tx, row, ask, answered)
                    if isinstance(outcome, _Rotated):
                        rotated = outcome
                        await tx.store_tokens(rotated.write)
                        outcome = rotated.issued
                if rotated is not None:
                    REFRESHES.labels(outcome="ok").inc()  # committed
            except asyncio.CancelledError as exc:
                if rotated is not None:  # drain() gave up on the commit
                    self._lost(connection_id, exc)
                raise
            except Exception as exc:
                if rotated is None:
                    raise
                if not _worth_storing_again(exc):
                    self._lost(connection_id, exc)
                    raise
                outcome = await self._store_again(rotated, exc)
            # A failure is raised only now, after its bookkeeping was committed.
            if isinstance(outcome, Exception):
                raise outcome
        except RowLockTimeout:
            raise UpstreamUnavailable(
                "another refresh of this connection is still running", retry_after=5
            ) from None
        except (ConnectionNotFound, NeedsReauth):
            self._cache.local_change(connection_id)
            raise
        finally:
            _resolve(answered)
        # Here, not in the callers: this task runs on when every caller left.
        self._cache.replace(connection_id, outcome)
        return outcome

    async def _refresh_row(
        self,
        tx: RefreshTransaction,
        row: LockedRow | None,
        ask: _Ask,
        answered: asyncio.Future[None],
    ) -> IssuedToken | _Rotated | Exception:
        """Under the row lock: refresh when still needed. The session to hand
        out, Workfront's new tokens to store, or the failure to raise once its
        bookkeeping is committed."""
        if row is None:
            raise ConnectionNotFound
        if row.status != STATUS_ACTIVE:
            raise NeedsReauth
        remaining = row.expires_at - now_utc()
        if row.token_version != ask.seen_version:
            # Another caller (maybe in another process) refreshed while we waited.
            return self._issued(row)
        if not ask.forced and remaining >= timedelta(seconds=ask.min_ttl):
            return self._issued(row)
        retry_at = row.next_refresh_at
        if (
            not ask.forced
            and row.last_error_class == "transient"
            and retry_at is not None
            and retry_at > now_utc()
        ):
            # A recent transient failure set when to try again (Retry-After
            # included); callers wanting more time do not hammer Workfront.
            if remaining > timedelta(0):
                return self._issued(row)
            wait = (retry_at - now_utc()).total_seconds()
            raise UpstreamUnavailable("backing off after a transient failure", wait)

        refresh_token = self._open(row, REFRESH)
        # No await between here and the upstream call: drain() cancels a
        # refresh only while it is outside this set, so before Workfront
        # can have seen the token.
        presenting = asyncio.current_task()
        if presenting is not None:
            self._presenting.add(presenting)
            presenting.add_done_callback(self._presenting.discard)
        try:
            tokens = await self._workfront.refresh(refresh_token)
        except GrantRevokedError as exc:
            _resolve(answered)
            now = now_utc()
            reason = {"reason": "grant_revoked"}
            await tx.mark_needs_reauth(
                row.id,
                error=f"grant_revoked: {exc.detail}",
                now=now,
                lifecycle_event=webhooks.CONNECTION_NEEDS_REAUTH,
                lifecycle_detail=reason,
                webhook_payload=webhooks.payload(
                    webhooks.CONNECTION_NEEDS_REAUTH,
                    now,
                    connection_id=row.id,
                    user_id=row.user_id,
                    external_ref=row.external_ref,
                    **reason,
                )
                if self._settings.webhook_url is not None
                else None,
            )
            log.warning("connection %s needs re-authorization: %s", row.id, exc.detail)
            REFRESHES.labels(outcome="revoked").inc()
            return NeedsReauth()
        except TransientError as exc:
            _resolve(answered)
            await tx.record_transient(
                row.id,
                error=f"transient: {exc.detail}",
                retry_at=self._retry_at(row.refresh_failures + 1, exc.retry_after),
                detail=exc.detail,
            )
            log.warning("refresh of %s failed transiently: %s", row.id, exc.detail)
            REFRESHES.labels(outcome="transient").inc()
            if not ask.forced and remaining > timedelta(0):
                # Keep serving the current session while it is still valid.
                return self._issued(row)
            return UpstreamUnavailable(exc.detail, retry_after=exc.retry_after)
        _resolve(answered)
        return _Rotated(
            issued=IssuedToken(
                connection_id=row.id,
                session_id=tokens.access_token,
                expires_at=tokens.expires_at,
                user_id=row.user_id,
                token_version=row.token_version + 1,
            ),
            write=TokenWrite(
                connection_id=row.id,
                from_version=row.token_version,
                access_token_enc=self._seal(row.id, ACCESS, tokens.access_token),
                refresh_token_enc=self._seal(row.id, REFRESH, tokens.refresh_token),
                expires_at=tokens.expires_at,
                next_refresh_at=self._next_refresh_at(tokens.expires_at),
                now=now_utc(),
                wid=tokens.wid or None,
            ),
        )

    async def _store_again(self, rotated: _Rotated, error: Exception) -> IssuedToken:
        """Store a refresh's answer on a new connection after the locked one failed.

        Workfront has rotated the refresh token: the stored one is dead, and
        this process holds the only live one. Dropping it would cost the user
        a re-authorization, so a database blip (the connection cut, a
        failover) is retried on fresh connections for as long as one upstream
        call may take. The row lock went with the failed connection; the write
        applies only while the row is active at the version this refresh
        started from, so it never undoes what happened to the row meanwhile
        (a re-authorization, or ``needs_reauth`` after another replica
        presented the dead token).
        """
        connection_id = rotated.write.connection_id
        log.warning(
            "storing the refreshed session of %s failed (%s); storing it again",
            connection_id,
            type(error).__name__,
        )
        upstream_timeout = self._settings.upstream_timeout_seconds
        deadline = time.monotonic() + 2 * upstream_timeout
        delay = 0.05
        try:
            while True:
                # Each attempt bounded, the wait for a connection included, and
                # to a part of the whole: one silent connection must not use
                # up the time of every attempt.
                left = deadline - time.monotonic()
                try:
                    async with asyncio.timeout(max(0.1, min(left, upstream_timeout / 2))):
                        stored = await store_tokens_again(self._reader, rotated.write)
                    break
                except Exception as exc:
                    if not _worth_storing_again(exc) or time.monotonic() + delay >= deadline:
                        raise
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, 1.0)
        except BaseException as exc:  # cancelled by drain() at shutdown included
            self._lost(connection_id, exc)
            raise
        if stored:
            REFRESHES.labels(outcome="ok").inc()
            log.info("stored the refreshed session of %s on a new connection", connection_id)
            return rotated.issued
        # The row went on: our first commit landed after all, or the row was
        # re-authorized, disabled or deleted meanwhile. Hand out what it holds.
        try:
            read = await self._read_token(connection_id)
        except Exception:
            log.warning(
                "refreshed session of %s: could not read back whether it was stored",
                connection_id,
            )
            raise
        if isinstance(read, IssuedToken) and read.session_id == rotated.issued.session_id:
            REFRESHES.labels(outcome="ok").inc()  # it was our commit
            return read
        self._lost(connection_id, None)
        if read is None:
            raise ConnectionNotFound
        if isinstance(read, str):
            raise NeedsReauth
        return read

    def _lost(self, connection_id: uuid.UUID, error: BaseException | None) -> None:
        """Workfront's new tokens for this connection were never stored."""
        REFRESHES.labels(outcome="lost").inc()
        if error is None:
            log.warning(
                "the refreshed session of %s was not stored: the row changed meanwhile",
                connection_id,
            )
        else:
            log.error(
                "the refreshed session of %s could not be stored (%s):"
                " the connection will need re-authorization",
                connection_id,
                type(error).__name__,
            )

    async def _connection_event(
        self,
        session: AsyncSession,
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
        await record_event(
            session, event_type, connection_id=connection_id, client_id=client_id, **detail
        )
        await webhooks.enqueue(
            session,
            self._settings,
            event_type,
            connection_id=connection_id,
            user_id=user_id,
            external_ref=external_ref,
            **detail,
        )

    async def _row_event(
        self,
        session: AsyncSession,
        event_type: str,
        row: Connection,
        *,
        client_id: uuid.UUID | None = None,
        **detail: Any,
    ) -> None:
        await self._connection_event(
            session,
            event_type,
            connection_id=row.id,
            user_id=row.user_id,
            external_ref=row.external_ref,
            client_id=client_id,
            **detail,
        )

    def _store_tokens(self, row: Connection, tokens: TokenSet) -> None:
        now = now_utc()
        row.access_token_enc = self._seal(row.id, ACCESS, tokens.access_token)
        row.refresh_token_enc = self._seal(row.id, REFRESH, tokens.refresh_token)
        row.expires_at = tokens.expires_at
        row.next_refresh_at = self._next_refresh_at(tokens.expires_at)
        row.token_version += 1
        row.last_refreshed_at = now
        row.updated_at = now
        row.refresh_failures = 0
        row.last_error = None
        row.last_error_class = None
        if tokens.wid:
            row.wid = tokens.wid

    # Connecting and disconnecting ------------------------------------------------

    async def store_connection(
        self,
        *,
        user: WorkfrontUser,
        tokens: TokenSet,
        external_ref: str | None,
        connect_session_id: uuid.UUID | None = None,
    ) -> tuple[uuid.UUID, bool]:
        """Create the user's connection, or update it on re-authorization.

        Returns (connection id, created). One transaction: a failure stores
        nothing, and a connect link is spent in the same transaction.
        """
        instance = self._settings.instance_host
        for _attempt in range(2):
            try:
                async with self._sessions() as session, session.begin():
                    if connect_session_id is not None:
                        await self._spend_connect_session(session, connect_session_id)
                    row = await session.scalar(
                        select(Connection)
                        .where(Connection.instance == instance, Connection.user_id == user.user_id)
                        .with_for_update()
                    )
                    if row is None:
                        connection_id = uuid.uuid4()
                        values = self._new_row_values(connection_id, instance, user, tokens)
                        values["external_ref"] = external_ref
                        await session.execute(insert(Connection).values(**values))
                        await self._connection_event(
                            session,
                            webhooks.CONNECTION_CREATED,
                            connection_id=connection_id,
                            user_id=user.user_id,
                            external_ref=external_ref,
                        )
                        return connection_id, True
                    recovered = row.status != STATUS_ACTIVE
                    self._store_tokens(row, tokens)
                    row.status = STATUS_ACTIVE
                    row.customer_id = user.customer_id
                    if external_ref is not None:
                        row.external_ref = external_ref
                    await record_event(
                        session,
                        "connection.reauthorized",
                        connection_id=row.id,
                        recovered=recovered,
                    )
                    if recovered:
                        await self._row_event(session, webhooks.CONNECTION_RECOVERED, row)
                    reauthorized = row.id
                # The old session may be cached; the re-authorization replaced it.
                # After the commit: a read before it would store the old session.
                self._cache.local_change(reauthorized)
                return reauthorized, False
            except IntegrityError:
                # Two callbacks for one new user raced on the unique key: retry as an update.
                continue
        raise RuntimeError("could not store the connection after a concurrent insert")

    @staticmethod
    async def _spend_connect_session(session: AsyncSession, connect_session_id: uuid.UUID) -> None:
        spent = await session.scalar(
            update(ConnectLink)
            .where(
                ConnectLink.id == connect_session_id,
                ConnectLink.used_at.is_(None),
                ConnectLink.expires_at > now_utc(),
            )
            .values(used_at=now_utc())
            .returning(ConnectLink.id)
        )
        if spent is None:
            raise ConnectLinkSpent

    def _new_row_values(
        self, connection_id: uuid.UUID, instance: str, user: WorkfrontUser, tokens: TokenSet
    ) -> dict[str, Any]:
        now = now_utc()
        return {
            "id": connection_id,
            "instance": instance,
            "user_id": user.user_id,
            "customer_id": user.customer_id,
            "wid": tokens.wid,
            "status": STATUS_ACTIVE,
            "access_token_enc": self._seal(connection_id, ACCESS, tokens.access_token),
            "refresh_token_enc": self._seal(connection_id, REFRESH, tokens.refresh_token),
            "token_version": 1,
            "expires_at": tokens.expires_at,
            "next_refresh_at": self._next_refresh_at(tokens.expires_at),
            "last_refreshed_at": now,
            "refresh_failures": 0,
            "created_at": now,
            "updated_at": now,
        }

    async def delete_connection(
        self, connection_id: uuid.UUID, *, client_id: uuid.UUID | None
    ) -> None:
        """Delete the row (the tokens go with it), then try Workfront's logout."""
        async with self._sessions() as session, session.begin():
            row = await session.scalar(
                select(Connection).where(Connection.id == connection_id).with_for_update()
            )
            if row is None:
                raise ConnectionNotFound
            try:
                access_token: str | None = self._open(row, ACCESS)
            except Exception:  # a row we cannot decrypt is still deletable
                access_token = None
            await session.execute(delete(Connection).where(Connection.id == connection_id))
            await self._row_event(session, webhooks.CONNECTION_DELETED, row, client_id=client_id)
        # Committed: this process stops serving it at once.
        self._cache.local_change(connection_id)
        if access_token is not None:
            await self._workfront.logout(access_token)

    async def reencrypt_all(
        self, *, batch_size: int = 500, stuck_after_seconds: float = 120.0
    ) -> int:
        """Re-encrypt every stored value under the primary key (``keys rotate``).

        Batches of rows, each in its own short transaction, while replicas keep
        serving. Rows locked by a refresh are skipped, not waited for: that
        refresh writes its new tokens under the primary key itself (when its
        replica already has the new key first), and the loop comes back until
        no value under another key is left.
        """
        primary = f"{self._cipher.primary_key_id}:"
        n = len(primary)
        stale = or_(
            func.left(Connection.access_token_enc, n) != primary,
            func.left(Connection.refresh_token_enc, n) != primary,
        )
        loop = asyncio.get_running_loop()
        changed = 0
        stuck_since: float | None = None
        while True:
            async with self._sessions() as session, session.begin():
                rows = (
                    await session.scalars(
                        select(Connection)
                        .where(stale)
                        .order_by(Connection.id)
                        .limit(batch_size)
                        .with_for_update(skip_locked=True)
                    )
                ).all()
                for row in rows:
                    row.access_token_enc = self._seal(row.id, ACCESS, self._open(row, ACCESS))
                    row.refresh_token_enc = self._seal(row.id, REFRESH, self._open(row, REFRESH))
            changed += len(rows)
            if rows:
                stuck_since = None
                log.info("keys rotate: %d connection(s) re-encrypted so far", changed)
                continue
            async with self._sessions() as session:
                left = await session.scalar(
                    select(func.count()).select_from(Connection).where(stale)
                )
            if not left:
                break
            stuck_since = stuck_since if stuck_since is not None else loop.time()
            if loop.time() - stuck_since > stuck_after_seconds:
                raise RotationStuck(left)
            await asyncio.sleep(0.2)  # rows held by refreshes in progress
        await self._reencrypt_verifiers(primary)
        return changed

    async def _reencrypt_verifiers(self, primary: str) -> None:
        """PKCE verifiers of sign-ins in progress (short-lived, few)."""
        async with self._sessions() as session, session.begin():
            attempts = (
                await session.scalars(
                    select(SigninAttempt)
                    .where(
                        SigninAttempt.code_verifier_enc.is_not(None),
                        func.left(SigninAttempt.code_verifier_enc, len(primary)) != primary,
                    )
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for attempt in attempts:
                sealed = attempt.code_verifier_enc
                if sealed is None:  # excluded by the query; narrows the type
                    continue
                aad = row_aad("authorizations", attempt.id, "code_verifier")
                attempt.code_verifier_enc = self._cipher.encrypt(
                    self._cipher.decrypt(sealed, aad=aad), aad=aad
                )
