"""A refresh's claim on a connection: one refresh at a time across every
process, with no database connection held while Workfront answers.

A refresh reads the row, claims it (``refresh_lease_owner``: this process,
``refresh_lease_until``: a bound), calls Workfront with no connection held,
and stores the outcome under its claim, clearing it in the same statement.
Each step is one short statement on a pooled connection, so refreshes of
hundreds of different connections run at once without queueing for the pool.

A claim is void the moment its process dies: every process holds an advisory
lock (``LEASE_LOCK_CLASS``, its owner id) for its lifetime on a connection of
its own, and a claim whose owner holds no such lock is free, as a row lock
would be freed by its connection closing. ``refresh_lease_until`` is only a
backstop for an owner that lives on but never finishes (its wait is bounded
by the refresh timeout, so only a stuck process). A process may always retake
its own claim: its flights run one at a time per connection.

Every statement that stores an outcome applies only under this process's
claim at the version the refresh started from, so it never overwrites what
happened to the row meanwhile (a re-authorization, a deletion, a refresh by a
process that took over a void claim).

The statements run on the asyncpg driver under SQLAlchemy's pool rather than
through the ORM: the refresh is the broker's busiest write (docs/benchmarks.md).
They name the columns of service.db.models; the refresh tests run them
against the migrated schema.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db import outbox
from service.tokens.token_columns import TokenColumns, sql_assignments

log = logging.getLogger("service.broker")  # pinned: operators filter on it

# The first key of every owner's advisory lock (two-key form: this, owner id).
LEASE_LOCK_CLASS = 0x57_54_42  # "WTB"

# The row as a refresh reads it (the fields of LockedRow, in order), as
# ``connections AS c``; the refresher's batch claim returns the same.
ROW_COLUMNS = """
    c.id, c.status, c.access_token_enc, c.refresh_token_enc, c.expires_at, c.next_refresh_at,
    c.token_version, c.user_id, c.external_ref, c.last_error_class, c.refresh_failures,
    c.last_refreshed_at, c.last_used_at, c.instance, c.brought_by
"""


def claimed_elsewhere(owner: str) -> str:
    """SQL: whether ``connections AS c`` is claimed by a live process other than
    ``owner`` (a parameter's placeholder: ``$2``, ``:owner``)."""
    return f"""(
    c.refresh_lease_owner IS NOT NULL AND c.refresh_lease_owner <> {owner}
    AND c.refresh_lease_until > now()
    AND EXISTS (
        SELECT 1 FROM pg_locks AS l
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
          AND l.classid = {LEASE_LOCK_CLASS} AND l.objid = c.refresh_lease_owner::oid
    )
)"""  # noqa: S608 - built from constants, never input


_CLAIMED_ELSEWHERE = claimed_elsewhere("$2")
_READ = f"""
    SELECT {ROW_COLUMNS}, {_CLAIMED_ELSEWHERE} AS claimed_elsewhere
    FROM connections AS c WHERE c.id = $1
"""  # noqa: S608 - built from constants, never input
# A row locked by a short transaction (a deletion, a re-authorization, a key
# rotation) is skipped, not waited for: the refresh reads it again shortly.
_CLAIM = f"""
    WITH free AS (
        SELECT c.id FROM connections AS c
        WHERE c.id = $1 AND c.token_version = $3 AND c.status = 'active'
          AND NOT {_CLAIMED_ELSEWHERE}
        FOR UPDATE SKIP LOCKED
    )
    UPDATE connections AS c
    SET refresh_lease_owner = $2, refresh_lease_until = now() + make_interval(secs => $4)
    FROM free WHERE c.id = free.id
    RETURNING c.id
"""  # noqa: S608 - built from constants, never input
_RELEASE = """
    UPDATE connections SET refresh_lease_owner = NULL, refresh_lease_until = NULL
    WHERE id = $1 AND refresh_lease_owner = $2
"""
_UNCLAIM = "refresh_lease_owner = NULL, refresh_lease_until = NULL"

# $1 id, $2 owner, $3 event kind, $4 event detail, $5 the version refreshed
# from, then the token set ($6…). The assignments are generated from
# constants (never input): hence the noqa.
_STORE_TOKENS = f"""
    WITH changed AS (
        UPDATE connections SET {sql_assignments(first_parameter=6)}, {_UNCLAIM}
        WHERE id = $1 AND refresh_lease_owner = $2 AND token_version = $5
          AND status = 'active'
        RETURNING id
    )
    INSERT INTO events (kind, connection_id, detail)
    SELECT $3, id, $4::jsonb FROM changed RETURNING connection_id
"""  # noqa: S608

_RECORD_TRANSIENT = f"""
    WITH changed AS (
        UPDATE connections SET
            refresh_failures = refresh_failures + 1, last_error = $5,
            last_error_class = 'transient', next_refresh_at = $6, {_UNCLAIM}
        WHERE id = $1 AND refresh_lease_owner = $2 RETURNING id
    )
    INSERT INTO events (kind, connection_id, detail) SELECT $3, id, $4::jsonb FROM changed
"""  # noqa: S608 - built from constants, never input

# The audit event of the failure, then the needs_reauth event (in that order of
# ids), and the webhook message ($6: NULL without webhooks, so no message row).
_MARK_NEEDS_REAUTH = f"""
    WITH changed AS (
        UPDATE connections SET
            status = 'needs_reauth', refresh_failures = refresh_failures + 1,
            last_error = $5, last_error_class = 'grant_revoked',
            next_refresh_at = NULL, updated_at = $7, {_UNCLAIM}
        WHERE id = $1 AND refresh_lease_owner = $2 RETURNING id
    ), audit AS (
        INSERT INTO events (kind, connection_id, detail)
        SELECT e.kind, changed.id, e.detail::jsonb
        FROM changed,
            (VALUES (1, $3::text, $4::text), (2, $8::text, $9::text)) AS e (n, kind, detail)
        ORDER BY e.n
    )
    {outbox.DRIVER_INSERT}
    SELECT $10, $8, $6::jsonb, $7, $7, 0 FROM changed WHERE $6::jsonb IS NOT NULL
"""  # noqa: S608 - built from constants, never input


@dataclass(frozen=True, slots=True)
class LockedRow:
    """The columns of a connection a refresh reads (claimed, or about to be)."""

    id: uuid.UUID
    status: str
    access_token_enc: str
    refresh_token_enc: str
    expires_at: datetime
    next_refresh_at: datetime | None
    token_version: int
    user_id: str
    external_ref: str | None
    last_error_class: str | None
    refresh_failures: int
    last_refreshed_at: datetime | None
    last_used_at: datetime
    instance: str  # the Workfront instance it belongs to (service.instances)
    brought_by: uuid.UUID | None  # the API client that brought it in


@dataclass(frozen=True, slots=True)
class HeldClaim:
    """A row the refresher's batch claimed for this process, as the claim read it.

    A refresh may present its refresh token with no statement first while
    nothing in this process has refreshed the connection since ``at`` (see
    Flights.flight), and the claim is young enough to outlast the refresh.
    """

    row: LockedRow
    at: float  # time.monotonic() before the claim was sent


@dataclass(frozen=True, slots=True)
class TokenWrite:
    """A refresh's new tokens, sealed, as they are to be stored."""

    connection_id: uuid.UUID
    from_version: int  # the token version they were refreshed from
    columns: TokenColumns


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


async def _first(engine: AsyncEngine, statement: str, arguments: tuple[Any, ...]) -> Any:
    """The first row of one statement (autocommit), or None.

    A connection that fails mid-statement is never put back in the pool (its
    state is unknown), and SQLAlchemy invalidates the whole pool when it turns
    out dead (after a failover every pooled connection is).
    """
    async with engine.connect() as conn:
        try:
            result = await conn.exec_driver_sql(statement, arguments)
            return result.first() if result.returns_rows else None
        except BaseException:
            await conn.invalidate()
            raise


class Claims:
    """The statements of a refresh, on the autocommit engine, for one owner."""

    def __init__(self, engine: AsyncEngine, owner: LeaseOwner, *, lease_seconds: float) -> None:
        self._engine = engine
        self._owner = owner
        self._lease_seconds = lease_seconds

    @property
    def owner(self) -> LeaseOwner:
        return self._owner

    async def read(self, connection_id: uuid.UUID) -> tuple[LockedRow, bool] | None:
        """The row, and whether another live process has claimed it (None: no row)."""
        found = await _first(self._engine, _READ, (connection_id, self._owner.id))
        if found is None:
            return None
        *columns, elsewhere = tuple(found)
        return LockedRow(*columns), bool(elsewhere)

    async def claim(self, row: LockedRow) -> bool:
        """Claim the row at the version read; False: it moved on or was claimed meanwhile."""
        await self._owner.ensure()
        claimed = await _first(
            self._engine,
            _CLAIM,
            (row.id, self._owner.id, row.token_version, self._lease_seconds),
        )
        return claimed is not None

    async def release(self, connection_id: uuid.UUID) -> None:
        await _first(self._engine, _RELEASE, (connection_id, self._owner.id))

    async def store_tokens(self, write: TokenWrite) -> bool:
        """Store under the claim; False: the row is no longer ours at that version."""
        stored = await _first(
            self._engine,
            _STORE_TOKENS,
            (
                write.connection_id,
                self._owner.id,
                "refresh.succeeded",
                "{}",
                write.from_version,
                *write.columns.arguments(),
            ),
        )
        return stored is not None

    async def record_transient(
        self, connection_id: uuid.UUID, *, error: str, retry_at: datetime, detail: str
    ) -> None:
        event = {"reason": "transient", "detail": detail}
        await _first(
            self._engine,
            _RECORD_TRANSIENT,
            (connection_id, self._owner.id, "refresh.failed", _json(event), error, retry_at),
        )

    async def mark_needs_reauth(
        self,
        connection_id: uuid.UUID,
        *,
        error: str,
        now: datetime,
        lifecycle_event: str,
        lifecycle_detail: dict[str, Any],
        webhook_message: outbox.OutboxMessage | None,
    ) -> None:
        await _first(
            self._engine,
            _MARK_NEEDS_REAUTH,
            (
                connection_id,
                self._owner.id,
                "refresh.failed",
                _json({"reason": "grant_revoked"}),
                error,
                None if webhook_message is None else _json(webhook_message.payload),
                now,
                lifecycle_event,
                _json(lifecycle_detail),
                uuid.uuid4() if webhook_message is None else webhook_message.id,
            ),
        )


class LeaseOwner:
    """This process as the owner of refresh claims: alive while it holds its
    advisory lock, on a connection of its own kept for the process's life.

    No claim is taken without the lock held (``ensure``): a claim whose owner
    holds no lock would look free to every other process at once.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        # Its own engine (one connection, autocommit), so the lock never goes
        # back to a pool and no transaction stays open.
        self._engine = engine
        self.id = secrets.randbelow(2**31 - 2) + 1  # 1 … 2**31 - 1: a positive int4
        self._conn: AsyncConnection | None = None
        self._opening = asyncio.Lock()

    async def ensure(self) -> None:
        """Hold the lock (taking it now if it is not held)."""
        if self._conn is not None:
            return
        async with self._opening:
            if self._conn is not None:
                return
            conn = await self._engine.connect()
            try:
                await conn.exec_driver_sql(
                    "SELECT pg_advisory_lock($1, $2)", (LEASE_LOCK_CLASS, self.id)
                )
            except BaseException:
                await conn.invalidate()
                raise
            self._conn = conn

    async def keep(self, *, every_seconds: float = 5.0) -> None:
        """Until cancelled: take the lock, check its connection now and then,
        and take it again on a new one when it was lost (a database restart, a
        failover). A database that is away only delays this."""
        while True:
            try:
                if self._conn is None:
                    await self.ensure()
                else:
                    await self._conn.exec_driver_sql("SELECT 1")
            except Exception as exc:
                log.warning("refresh claims: the liveness lock's connection failed (%s)", exc)
                await self._drop()
            await asyncio.sleep(every_seconds)

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.invalidate()
            except Exception:  # noqa: S110 - it is gone either way
                pass

    async def close(self) -> None:
        """Give up the lock: this process's claims are free from now on. (The
        connection is closed, not pooled: a pooled one would keep the lock.)"""
        await self._drop()
