"""One refresh of one connection: row lock -> Workfront -> store, then hand out.

* Refreshes of one connection are serialized across every process by a
  ``SELECT … FOR UPDATE`` on its row (service.tokens.transaction), held
  across the upstream call. A waiter re-reads the row under the lock and
  skips the upstream call when the ``token_version`` moved (someone else
  refreshed meanwhile).
* The new refresh token is committed before any caller sees the new session.
  If the locked connection fails after Workfront answered, the new tokens are
  stored again on another connection (service.tokens.store_again).
* A refresh answered with a revoked grant marks the connection
  ``needs_reauth``; that refresh token is never presented again.
* A transient failure records when to try again; callers are served the
  current session while it is still valid.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta

from service.clock import now_utc
from service.db import outbox
from service.db.models import STATUS_ACTIVE
from service.logs import CONNECTION_ID
from service.metrics import REFRESHES
from service.tokens.flights import Presenting, resolve
from service.tokens.issued import (
    Ask,
    ConnectionNotFound,
    IssuedToken,
    NeedsReauth,
    UpstreamUnavailable,
)
from service.tokens.parts import TokenParts
from service.tokens.sealing import REFRESH
from service.tokens.store_again import Rotated, lost, store_again, worth_storing_again
from service.tokens.token_columns import seal_tokens
from service.tokens.transaction import (
    LockedRow,
    RefreshTransaction,
    RowLockTimeout,
    TokenWrite,
    locked_row,
)
from service.workfront import GrantRevokedError, TransientError

log = logging.getLogger("service.broker")  # pinned: operators filter on it


class Refresh:
    def __init__(self, parts: TokenParts, presenting: Presenting) -> None:
        self._settings = parts.settings
        self._reader = parts.reader
        self._sealer = parts.sealer
        self._schedule = parts.schedule
        self._reads = parts.reads
        self._workfront = parts.workfront
        self._presenting = presenting
        settings = parts.settings
        self._lock_timeout_ms = int(settings.lock_timeout_seconds * 1000)
        # A refresh holds a pooled connection across the lock wait and the
        # upstream call; at most half the pool does, so token reads of live
        # sessions keep working while Workfront is slow.
        self._slots = asyncio.Semaphore(max(1, settings.db_pool_size // 2))

    async def run(
        self, connection_id: uuid.UUID, ask: Ask, answered: asyncio.Future[None]
    ) -> IssuedToken:
        """A flight's task: refresh under the row lock when still needed."""
        # Its own task (see Flights.flight), so this names the connection in
        # the log lines of this refresh only.
        CONNECTION_ID.set(str(connection_id))
        upstream_timeout = self._settings.upstream_timeout_seconds
        rotated: Rotated | None = None
        try:
            try:
                async with (
                    self._slots,
                    locked_row(
                        self._reader,
                        connection_id,
                        lock_timeout_ms=self._lock_timeout_ms,
                        write_timeout=upstream_timeout,
                    ) as (tx, row),
                ):
                    outcome = await self._under_lock(tx, row, ask, answered)
                    if isinstance(outcome, Rotated):
                        rotated = outcome
                        await tx.store_tokens(rotated.write)
                        outcome = rotated.issued
                if rotated is not None:
                    REFRESHES.labels(outcome="ok").inc()  # committed
            except asyncio.CancelledError as exc:
                if rotated is not None:  # drain() gave up on the commit
                    lost(connection_id, exc)
                raise
            except Exception as exc:
                if rotated is None:
                    raise
                if not worth_storing_again(exc):
                    lost(connection_id, exc)
                    raise
                outcome = await store_again(
                    rotated,
                    exc,
                    reader=self._reader,
                    reads=self._reads,
                    upstream_timeout=upstream_timeout,
                )
            # A failure is raised only now, after its bookkeeping was committed.
            if isinstance(outcome, Exception):
                raise outcome
        except RowLockTimeout:
            raise UpstreamUnavailable(
                "another refresh of this connection is still running", retry_after=5
            ) from None
        except (ConnectionNotFound, NeedsReauth):
            self._reads.changed_here(connection_id)
            raise
        finally:
            resolve(answered)
        # Here, not in the callers: this task runs on when every caller left.
        self._reads.refreshed(connection_id, outcome)
        return outcome

    async def _under_lock(
        self,
        tx: RefreshTransaction,
        row: LockedRow | None,
        ask: Ask,
        answered: asyncio.Future[None],
    ) -> IssuedToken | Rotated | Exception:
        """The session to hand out, Workfront's new tokens to store, or the
        failure to raise once its bookkeeping is committed."""
        if row is None:
            raise ConnectionNotFound
        if row.status != STATUS_ACTIVE:
            raise NeedsReauth
        remaining = row.expires_at - now_utc()
        if row.token_version != ask.seen_version:
            # Another caller (maybe in another process) refreshed while we waited.
            return self._sealer.issued(row)
        if not ask.forced and remaining >= timedelta(seconds=ask.min_ttl):
            return self._sealer.issued(row)
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
                return self._sealer.issued(row)
            wait = (retry_at - now_utc()).total_seconds()
            raise UpstreamUnavailable("backing off after a transient failure", wait)

        refresh_token = self._sealer.open(row, REFRESH)
        # No await between here and the upstream call: drain() cancels a
        # refresh only until it is marked presenting, so before Workfront
        # can have seen the token.
        self._presenting.mark()
        try:
            tokens = await self._workfront.refresh(refresh_token)
        except GrantRevokedError as exc:
            resolve(answered)
            await self._mark_needs_reauth(tx, row, exc.detail)
            return NeedsReauth()
        except TransientError as exc:
            resolve(answered)
            await tx.record_transient(
                row.id,
                error=f"transient: {exc.detail}",
                retry_at=self._schedule.retry_at(row.refresh_failures + 1, exc.retry_after),
                detail=exc.detail,
            )
            log.warning("refresh of %s failed transiently: %s", row.id, exc.detail)
            REFRESHES.labels(outcome="transient").inc()
            if not ask.forced and remaining > timedelta(0):
                # Keep serving the current session while it is still valid.
                return self._sealer.issued(row)
            return UpstreamUnavailable(exc.detail, retry_after=exc.retry_after)
        resolve(answered)
        refreshed_at = now_utc()
        return Rotated(
            issued=IssuedToken(
                connection_id=row.id,
                session_id=tokens.access_token,
                expires_at=tokens.expires_at,
                user_id=row.user_id,
                token_version=row.token_version + 1,
                refreshed_at=refreshed_at,
            ),
            write=TokenWrite(
                connection_id=row.id,
                from_version=row.token_version,
                columns=seal_tokens(
                    self._sealer,
                    self._schedule,
                    row.id,
                    tokens,
                    refreshed_at,
                    # A caller's refresh is a use; the refresher's is not.
                    last_used_at=row.last_used_at if ask.proactive else None,
                ),
            ),
        )

    async def _mark_needs_reauth(self, tx: RefreshTransaction, row: LockedRow, detail: str) -> None:
        now = now_utc()
        reason = {"reason": "grant_revoked"}
        await tx.mark_needs_reauth(
            row.id,
            error=f"grant_revoked: {detail}",
            now=now,
            lifecycle_event=outbox.CONNECTION_NEEDS_REAUTH,
            lifecycle_detail=reason,
            webhook_message=outbox.message(
                self._settings,
                outbox.CONNECTION_NEEDS_REAUTH,
                now,
                connection_id=row.id,
                user_id=row.user_id,
                external_ref=row.external_ref,
                **reason,
            ),
        )
        log.warning("connection %s needs re-authorization: %s", row.id, detail)
        REFRESHES.labels(outcome="revoked").inc()
