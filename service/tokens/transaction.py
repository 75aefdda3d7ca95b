"""The refresh transaction: lock a connection's row, then store what Workfront answered.

It runs on the asyncpg connection under SQLAlchemy's pool rather than through
the ORM: a refresh is the broker's busiest write, and the ORM's flush, unit of
work and identity map cost several times the CPU and round trips of these
four (docs/benchmarks.md has the measurements):

1. ``BEGIN`` and the two ``SET LOCAL`` in one simple query;
2. ``SELECT … FOR UPDATE`` of the row;
3. (Workfront is called) one statement storing the outcome and its audit
   event (and webhook message) through data-modifying CTEs;
4. ``COMMIT``.

Every other write keeps the ORM. The statements name the columns of
service.db.models; the refresh tests run them against the migrated schema.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import outbox
from service.tokens.token_columns import TokenColumns, sql_assignments

LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of lock_timeout


class RowLockTimeout(Exception):
    """Waiting for the row's lock (another refresh of it) took longer than lock_timeout.

    Only the lock wait: a lock timeout later in the transaction (after
    Workfront answered) is an error of its own, not "another refresh is running".
    """


_ROLLBACK_TIMEOUT_SECONDS = 5.0

_LOCK = """
    SELECT id, status, access_token_enc, refresh_token_enc, expires_at, next_refresh_at,
           token_version, user_id, external_ref, last_error_class, refresh_failures,
           last_refreshed_at, last_used_at
    FROM connections WHERE id = $1 FOR UPDATE
"""

# Only over the version the tokens were refreshed from: under the row lock it
# cannot have moved, and when storing again on a new connection (see
# store_tokens_again) a moved version means the row went on without us.
# The assignments are generated from constants (never input): hence the noqa.
_STORE_TOKENS = f"""
    WITH changed AS (
        UPDATE connections SET {sql_assignments(first_parameter=5)}
        WHERE id = $1 AND token_version = $4 AND status = 'active' RETURNING id
    )
    INSERT INTO events (kind, connection_id, detail)
    SELECT $2, id, $3::jsonb FROM changed RETURNING connection_id
"""  # noqa: S608

_RECORD_TRANSIENT = """
    WITH changed AS (
        UPDATE connections SET
            refresh_failures = refresh_failures + 1, last_error = $4,
            last_error_class = 'transient', next_refresh_at = $5
        WHERE id = $1 RETURNING id
    )
    INSERT INTO events (kind, connection_id, detail) SELECT $2, id, $3::jsonb FROM changed
"""

# The audit event of the failure, then the needs_reauth event (in that order of
# ids), and the webhook message ($5: NULL without webhooks, so no message row).
_MARK_NEEDS_REAUTH = f"""
    WITH changed AS (
        UPDATE connections SET
            status = 'needs_reauth', refresh_failures = refresh_failures + 1,
            last_error = $4, last_error_class = 'grant_revoked',
            next_refresh_at = NULL, updated_at = $6
        WHERE id = $1 RETURNING id
    ), audit AS (
        INSERT INTO events (kind, connection_id, detail)
        SELECT e.kind, changed.id, e.detail::jsonb
        FROM changed,
            (VALUES (1, $2::text, $3::text), (2, $7::text, $8::text)) AS e (n, kind, detail)
        ORDER BY e.n
    )
    {outbox.DRIVER_INSERT}
    SELECT $9, $7, $5::jsonb, $6, $6, 0 FROM changed WHERE $5::jsonb IS NOT NULL
"""  # noqa: S608 - built from constants, never input


@dataclass(frozen=True, slots=True)
class LockedRow:
    """The columns of a connection a refresh reads, under its row lock."""

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


@dataclass(frozen=True, slots=True)
class TokenWrite:
    """A refresh's new tokens, sealed, as they are to be stored."""

    connection_id: uuid.UUID
    from_version: int  # the token version they were refreshed from
    columns: TokenColumns

    def arguments(self) -> tuple[Any, ...]:
        return (
            self.connection_id,
            "refresh.succeeded",
            "{}",
            self.from_version,
            *self.columns.arguments(),
        )


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


class RefreshTransaction:
    """Writes inside the open transaction; each is one round trip, bounded
    by ``write_timeout`` (a connection gone silent, say in a failover, would
    otherwise hold the refresh until the kernel gives up on it)."""

    def __init__(self, raw: asyncpg.Connection, write_timeout: float) -> None:
        self._raw = raw
        self._timeout = write_timeout

    async def store_tokens(self, write: TokenWrite) -> None:
        stored = await self._raw.fetchval(_STORE_TOKENS, *write.arguments(), timeout=self._timeout)
        if stored is None:
            # Impossible under the row lock; if it ever happens, fail loudly
            # rather than commit a refresh whose tokens were not stored.
            raise RuntimeError("the locked row changed under its lock")

    async def record_transient(
        self, connection_id: uuid.UUID, *, error: str, retry_at: datetime, detail: str
    ) -> None:
        event = {"reason": "transient", "detail": detail}
        await self._raw.execute(
            _RECORD_TRANSIENT,
            connection_id,
            "refresh.failed",
            _json(event),
            error,
            retry_at,
            timeout=self._timeout,
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
        await self._raw.execute(
            _MARK_NEEDS_REAUTH,
            connection_id,
            "refresh.failed",
            _json({"reason": "grant_revoked"}),
            error,
            None if webhook_message is None else _json(webhook_message.payload),
            now,
            lifecycle_event,
            _json(lifecycle_detail),
            uuid.uuid4() if webhook_message is None else webhook_message.id,
            timeout=self._timeout,
        )


@asynccontextmanager
async def locked_row(
    engine: AsyncEngine, connection_id: uuid.UUID, *, lock_timeout_ms: int, write_timeout: float
) -> AsyncIterator[tuple[RefreshTransaction, LockedRow | None]]:
    """A transaction holding the row's lock (None: no such row), committed when
    the block ends normally and rolled back when it raises.

    ``engine`` must be in autocommit mode, so SQLAlchemy itself never opens a
    transaction on the connection. lock_timeout bounds the wait for another
    replica's refresh (RowLockTimeout); the idle timeout is
    switched off because the transaction idles while Workfront answers, and a
    server-side timeout would end it and free the row mid-refresh, letting
    another replica present the same refresh token.
    """
    async with engine.connect() as conn:
        raw: asyncpg.Connection = (await conn.get_raw_connection()).driver_connection
        # SQLAlchemy's pool does not know about this transaction: the
        # connection must not go back to the pool inside it (holding the row
        # lock). Closed unless the transaction surely ended: closing ends it
        # on the server and frees the row.
        ended = False
        try:
            await raw.execute(
                f"BEGIN; SET LOCAL lock_timeout = {int(lock_timeout_ms)};"
                " SET LOCAL idle_in_transaction_session_timeout = 0"
            )
            try:
                found = await raw.fetchrow(_LOCK, connection_id)
            except asyncpg.PostgresError as exc:
                if exc.sqlstate == LOCK_NOT_AVAILABLE:
                    raise RowLockTimeout from None
                raise
            yield (
                RefreshTransaction(raw, write_timeout),
                None if found is None else LockedRow(*found),
            )
            await raw.execute("COMMIT", timeout=write_timeout)
            ended = True
        except Exception:
            # Not when cancelled (a BaseException): mid-statement the
            # connection's state is unknown, and a rollback could wait on a
            # dead peer.
            with contextlib.suppress(Exception):
                await raw.execute("ROLLBACK", timeout=_ROLLBACK_TIMEOUT_SECONDS)
                ended = True
            raise
        finally:
            if not ended or raw.is_in_transaction():
                await conn.invalidate()


async def store_tokens_again(engine: AsyncEngine, write: TokenWrite) -> bool:
    """Store a refresh's tokens on a new connection, after the locked one failed.

    One statement in its own transaction, applied only if the row is still
    active at the version the tokens were refreshed from. False: it is not
    (the first commit landed after all, or the row went on without these).
    The caller bounds the time (the wait for the row lock included).

    Through SQLAlchemy, not the driver: when the connection turns out dead,
    SQLAlchemy then invalidates the whole pool (after a failover every pooled
    connection is), so the next attempt opens a new one instead of meeting
    the next dead one.
    """
    async with engine.connect() as conn:
        try:
            result = await conn.exec_driver_sql(_STORE_TOKENS, write.arguments())
            stored = result.first()
        except BaseException:
            # Failed or cut off by the caller's deadline: its state is unknown
            # (a cancel may still be on its way), so never back into the pool.
            await conn.invalidate()
            raise
    return stored is not None
