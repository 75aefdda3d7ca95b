"""One refresh of one connection: read -> claim -> Workfront -> store, then hand out.

* Refreshes of one connection are serialized across every process by a claim
  on its row (service.tokens.lease), taken at the version read (or by the
  refresher's batch, which read the row as it claimed it): a refresh
  that finds the row claimed by another live process waits for it to finish
  (polling the row, bounded by BROKER_LOCK_TIMEOUT_SECONDS) and, when the
  version moved meanwhile, hands out that refresh's session with no upstream
  call. No database connection is held while Workfront answers, so refreshes
  of many different connections run at once.
* The new refresh token is stored before any caller sees the new session, in
  one statement under the claim; a failed store is retried on fresh
  connections (service.tokens.store_again).
* A refresh answered with a revoked grant marks the connection
  ``needs_reauth``; that refresh token is never presented again.
* A transient failure records when to try again; callers are served the
  current session while it is still valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from datetime import timedelta

from service.clock import now_utc
from service.db import outbox
from service.db.models import STATUS_ACTIVE
from service.logs import CONNECTION_ID
from service.metrics import REFRESHES, child
from service.tokens.flights import Presenting, resolve
from service.tokens.issued import (
    Ask,
    ConnectionNotFound,
    IssuedToken,
    NeedsReauth,
    UpstreamUnavailable,
)
from service.tokens.lease import Claims, LockedRow, TokenWrite
from service.tokens.parts import TokenParts
from service.tokens.sealing import REFRESH
from service.tokens.store_again import Rotated, store_rotated
from service.tokens.token_columns import seal_tokens
from service.workfront import GrantRevokedError, TransientError

log = logging.getLogger("service.broker")  # pinned: operators filter on it

# How often a refresh looks again at a row another process has claimed.
_CLAIM_POLL_SECONDS = 0.05


class Refresh:
    def __init__(self, parts: TokenParts, presenting: Presenting) -> None:
        self._settings = parts.settings
        self._reader = parts.reader
        self._sealer = parts.sealer
        self._schedule = parts.schedule
        self._reads = parts.reads
        self._workfronts = parts.workfronts
        self._claims = parts.claims
        self._presenting = presenting
        # Refreshes on their way to Workfront at once (each holds a connection
        # to it; none holds a database connection meanwhile).
        self._slots = asyncio.Semaphore(parts.settings.refresh_concurrency)

    async def run(
        self, connection_id: uuid.UUID, ask: Ask, answered: asyncio.Future[None]
    ) -> IssuedToken:
        """A flight's task: refresh under a claim when still needed."""
        # Its own task (see Flights.flight), so this names the connection in
        # the log lines of this refresh only.
        CONNECTION_ID.set(str(connection_id))
        try:
            try:
                await self._slots.acquire()
            except BaseException:
                # Cancelled waiting for a slot (drain): a claim the refresher's
                # batch took for this refresh is given up at once.
                if ask.held is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(self._claims.release(connection_id))
                raise
            try:
                outcome = await self._refresh(connection_id, ask, answered)
            finally:
                self._slots.release()
        except (ConnectionNotFound, NeedsReauth):
            self._reads.changed_here(connection_id)
            raise
        finally:
            resolve(answered)
        # Here, not in the callers: this task runs on when every caller left.
        self._reads.refreshed(connection_id, outcome)
        return outcome

    async def _refresh(
        self, connection_id: uuid.UUID, ask: Ask, answered: asyncio.Future[None]
    ) -> IssuedToken:
        if ask.held is not None:
            # Claimed and read by the refresher's batch (still valid: Flights).
            row: LockedRow | IssuedToken = ask.held.row
        else:
            row = await self._claimed_row(connection_id, ask)
        if isinstance(row, IssuedToken):
            return row
        try:
            outcome = await self._present(row, ask, answered)
        except BaseException:
            # Cancelled before Workfront saw the token (drain), or a failure
            # whose bookkeeping could not be written: free the row for others.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._claims.release(row.id))
            raise
        if isinstance(outcome, Rotated):
            return await store_rotated(
                outcome,
                claims=self._claims,
                reads=self._reads,
                upstream_timeout=self._settings.upstream_timeout_seconds,
            )
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def _claimed_row(self, connection_id: uuid.UUID, ask: Ask) -> LockedRow | IssuedToken:
        """The row, claimed by this process; or the session to hand out without a refresh."""
        give_up = time.monotonic() + self._settings.lock_timeout_seconds
        while True:
            found = await self._claims.read(connection_id)
            if found is None:
                raise ConnectionNotFound
            row, claimed_elsewhere = found
            if row.status != STATUS_ACTIVE:
                raise NeedsReauth
            enough = self._enough(row, ask)
            if enough is not None:
                return enough
            if not claimed_elsewhere and await self._claims.claim(row):
                return row
            # Another process is refreshing it (or the row moved between the
            # read and the claim): look again shortly.
            if time.monotonic() >= give_up:
                raise UpstreamUnavailable(
                    "another refresh of this connection is still running", retry_after=5
                )
            await asyncio.sleep(_CLAIM_POLL_SECONDS * random.uniform(0.5, 1.5))  # noqa: S311

    def _enough(self, row: LockedRow, ask: Ask) -> IssuedToken | None:
        """The row's session when no refresh is needed for ``ask``; raises the
        backoff's UpstreamUnavailable when one is needed but must wait."""
        remaining = row.expires_at - now_utc()
        if row.token_version != ask.seen_version:
            # Another caller (maybe in another process) refreshed meanwhile.
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
        return None

    async def _present(
        self, row: LockedRow, ask: Ask, answered: asyncio.Future[None]
    ) -> IssuedToken | Rotated | Exception:
        """Present the refresh token: Workfront's new tokens to store, the session
        to hand out, or the failure to raise (its bookkeeping written)."""
        claims = self._claims
        refresh_token = self._sealer.open(row, REFRESH)
        # No await between here and the upstream call: drain() cancels a
        # refresh only until it is marked presenting, so before Workfront
        # can have seen the token.
        self._presenting.mark()
        try:
            tokens = await self._workfronts[row.instance].refresh(refresh_token)
        except GrantRevokedError as exc:
            resolve(answered)
            await self._mark_needs_reauth(claims, row, exc.detail)
            return NeedsReauth()
        except TransientError as exc:
            resolve(answered)
            await claims.record_transient(
                row.id,
                error=f"transient: {exc.detail}",
                retry_at=self._schedule.retry_at(row.refresh_failures + 1, exc.retry_after),
                detail=exc.detail,
            )
            log.warning("refresh of %s failed transiently: %s", row.id, exc.detail)
            child(REFRESHES, "transient", row.instance).inc()
            remaining = row.expires_at - now_utc()
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
                instance=row.instance,
                brought_by=row.brought_by,
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

    async def _mark_needs_reauth(self, claims: Claims, row: LockedRow, detail: str) -> None:
        now = now_utc()
        reason = {"reason": "grant_revoked"}
        await claims.mark_needs_reauth(
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
                instance=row.instance,
                external_ref=row.external_ref,
                **reason,
            ),
        )
        log.warning("connection %s needs re-authorization: %s", row.id, detail)
        child(REFRESHES, "revoked", row.instance).inc()
