"""Storing a refresh's answer: Workfront has rotated the refresh token, the
stored one is dead, and this process holds the only live one.

Dropping it would cost the user a re-authorization, so a database blip (a
connection cut, a failover) is retried on fresh connections for as long as
one upstream call may take. The write applies only under this process's claim
at the version the refresh started from, so it never undoes what happened to
the row meanwhile (a re-authorization, a deletion, or ``needs_reauth`` after
another process took over a void claim and presented the dead token).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

from service.db.errors import is_database_outage, sqlstate
from service.metrics import REFRESHES, child
from service.tokens.issued import ConnectionNotFound, IssuedToken, NeedsReauth
from service.tokens.lease import Claims, TokenWrite
from service.tokens.reads import TokenReads

log = logging.getLogger("service.broker")  # pinned: operators filter on it

# serialization failure, deadlock, statement cancelled, lock timeout, read-only
# (a failover in progress): the same statement may succeed a moment later.
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "57014", "55P03", "25006"})


@dataclass(frozen=True, slots=True)
class Rotated:
    """Workfront's answer to a refresh, not yet stored: its old refresh token is dead."""

    issued: IssuedToken
    write: TokenWrite


def worth_storing_again(exc: Exception) -> bool:
    """A database failure (not a bug): storing the same row again may succeed."""
    if is_database_outage(exc):  # TimeoutError included (an OSError)
        return True
    # From the driver (the locked connection) or wrapped by SQLAlchemy (a retry).
    return sqlstate(exc) in _RETRYABLE_SQLSTATES


def lost(connection_id: uuid.UUID, instance: str, error: BaseException | None) -> None:
    """Workfront's new tokens for this connection were never stored."""
    child(REFRESHES, "lost", instance).inc()
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


async def store_rotated(
    rotated: Rotated, *, claims: Claims, reads: TokenReads, upstream_timeout: float
) -> IssuedToken:
    """Store a refresh's answer under its claim, retried on fresh connections."""
    connection_id = rotated.write.connection_id
    instance = rotated.issued.instance
    deadline = time.monotonic() + 2 * upstream_timeout
    delay = 0.05
    attempt = 0
    try:
        while True:
            attempt += 1
            # Each attempt bounded, the wait for a connection included, and
            # to a part of the whole: one silent connection must not use
            # up the time of every attempt.
            left = deadline - time.monotonic()
            try:
                async with asyncio.timeout(max(0.1, min(left, upstream_timeout / 2))):
                    stored = await claims.store_tokens(rotated.write)
                break
            except Exception as exc:
                if not worth_storing_again(exc) or time.monotonic() + delay >= deadline:
                    raise
                if attempt == 1:
                    log.warning(
                        "storing the refreshed session of %s failed (%s); storing it again",
                        connection_id,
                        type(exc).__name__,
                    )
                await asyncio.sleep(delay)
                delay = min(2 * delay, 1.0)
    except BaseException as exc:  # cancelled by drain() at shutdown included
        lost(connection_id, instance, exc)
        raise
    if stored:
        child(REFRESHES, "ok", instance).inc()
        if attempt > 1:
            log.info("stored the refreshed session of %s on a new connection", connection_id)
        return rotated.issued
    # Not ours any more: an earlier attempt landed after all (its answer was
    # lost), or the row was re-authorized, disabled or deleted meanwhile.
    # Our claim may still be on it (the store did not apply): let it go, so no
    # other process waits for it. Then hand out what the row holds.
    try:
        await claims.release(connection_id)
    except Exception:
        log.warning("could not release the claim on %s; it ends with its bound", connection_id)
    try:
        read = await reads.read(connection_id)
    except Exception:
        log.warning(
            "refreshed session of %s: could not read back whether it was stored",
            connection_id,
        )
        raise
    if isinstance(read, IssuedToken) and read.session_id == rotated.issued.session_id:
        child(REFRESHES, "ok", instance).inc()  # it was our own write
        return read
    if read is None:
        # Deleted meanwhile: its tokens were to go anyway.
        log.info("connection %s was deleted while it was refreshed", connection_id)
        raise ConnectionNotFound
    if isinstance(read, str):
        lost(connection_id, instance, None)  # someone presented the dead token meanwhile
        raise NeedsReauth
    # Re-authorized meanwhile: the user's newer grant is the one kept.
    log.info("connection %s was re-authorized while it was refreshed", connection_id)
    return read
