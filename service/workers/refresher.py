"""The proactive refresher: renew sessions in use before they lapse, and keep
idle connections' grants alive.

Every serve process runs one. Each round claims a batch of due connections
in one short transaction (``FOR UPDATE SKIP LOCKED``): it pushes their
``next_refresh_at`` forward by a lease, takes each row's refresh claim for
this process and reads the row, so replicas never claim the same row and a
worker calls Workfront with no statement first. A process killed mid-round
voids its claims at once (service.tokens.lease); its rows are due again when
the lease runs out. The refresh goes through ``TokenIssuer.refresh_claimed``:
when a flight of that connection ran in this process since the batch read the
row, it reads and claims the row again and skips the upstream call when the
token version moved (an on-demand caller refreshed first), so a connection is
never refreshed twice for one due date.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text

from service.clock import now_utc
from service.config import Settings
from service.db.engine import Database
from service.logs import CONNECTION_ID
from service.metrics import CONNECTIONS, REFRESHER_LAG, SOONEST_EXPIRY
from service.tokens.issued import ConnectionNotFound, NeedsReauth, UpstreamUnavailable
from service.tokens.issuer import TokenIssuer
from service.tokens.lease import ROW_COLUMNS, HeldClaim, LockedRow, claimed_elsewhere
from service.tokens.schedule import RefreshSchedule
from service.workers.rounds import run_rounds

log = logging.getLogger("service.refresher")  # pinned: operators filter on it

_ROW_FIELDS = len(LockedRow.__dataclass_fields__)  # ROW_COLUMNS, then the claim's own

# Also timed at 100,000 rows by bench/scale.py. The batch takes each row's
# refresh claim for this process (service.tokens.lease) and reads it, so a
# worker goes to Workfront with no statement first. Rows another live process
# has claimed (an on-demand refresh there) are left: they are due again once
# that refresh stores its session, or free when it fails.
CLAIM_DUE = text(
    f"""
    WITH due AS (
        SELECT c.id, c.next_refresh_at AS due_at
        FROM connections AS c
        WHERE c.status = 'active' AND c.next_refresh_at <= now()
          AND NOT {claimed_elsewhere(":owner")}
        ORDER BY c.next_refresh_at
        LIMIT :batch
        FOR UPDATE OF c SKIP LOCKED
    )
    UPDATE connections AS c
    SET next_refresh_at = now() + make_interval(secs => :lease),
        refresh_lease_owner = :owner, refresh_lease_until = now() + make_interval(secs => :lease)
    FROM due
    WHERE c.id = due.id
    RETURNING {ROW_COLUMNS}, due.due_at, now() AS db_now
    """  # noqa: S608 - built from constants, never input
)

# Idle claims whose grant needs no renewal yet: only their next due time
# moves, and the batch's claim on them is given up.
_RESCHEDULE = text(
    """
    UPDATE connections AS c
    SET next_refresh_at = v.at, refresh_lease_owner = NULL, refresh_lease_until = NULL
    FROM unnest(CAST(:ids AS uuid[]), CAST(:ats AS timestamptz[])) AS v (id, at)
    WHERE c.id = v.id
    """
)

_SUMMARY = text(
    "SELECT status, count(*) AS n, min(expires_at) AS soonest FROM connections GROUP BY status"
)


@dataclass(frozen=True, slots=True)
class Claim:
    held: HeldClaim
    due_at: datetime


class Refresher:
    def __init__(self, *, settings: Settings, database: Database, tokens: TokenIssuer) -> None:
        self._settings = settings
        self._database = database
        self._tokens = tokens
        self._schedule = RefreshSchedule(settings)
        # The lease must outlive one refresh, so a slow one is not claimed
        # again meanwhile: the wait for a worker (a held claim is used only
        # within BROKER_LOCK_TIMEOUT_SECONDS of the batch, see Flights), the
        # upstream call (its ceiling), storing the answer again if a statement
        # failed (up to 2 x the upstream timeout), and 20 s of margin.
        self._lease_seconds = max(
            60.0,
            settings.lock_timeout_seconds
            + settings.refresh_call_ceiling_seconds
            + 2 * settings.upstream_timeout_seconds
            + 20,
        )
        # Claimed connections waiting for a worker; refresher_concurrency
        # workers take them one at a time.
        self._queue: asyncio.Queue[Claim] = asyncio.Queue()
        self._busy = 0  # workers in a refresh
        self._changed = asyncio.Event()  # a worker took a claim or finished one
        self._gauges_at = 0.0

    async def run(self) -> None:
        """Loop until cancelled; a full batch goes straight on to the next round.

        Long-lived workers rather than a task per claim: a refresh then starts
        the moment one ends, without a task to create or a semaphore to hand
        over (each a turn of a busy event loop).
        """

        async def round_() -> bool:
            return await self.run_once() >= self._settings.refresher_batch_size

        workers = [
            asyncio.create_task(self._work(), name="refresher-worker")
            for _ in range(self._settings.refresher_concurrency)
        ]
        try:
            await run_rounds(
                "refresher", round_, poll_seconds=self._settings.refresher_poll_seconds
            )
        finally:
            # Claimed but not started: they come back when their lease ends.
            # Started ones are shielded in the broker and drained at shutdown.
            for worker in workers:
                worker.cancel()

    async def run_once(self) -> int:
        """One round: claim due connections and queue them; returns how many due
        rows it took (claimed, or idle and only rescheduled).

        Returns once the queue is down to one claim per worker, not once the
        claims are done: the next batch is claimed while these are refreshed,
        so workers never idle waiting for a claim round.
        """
        claims, rows = await self._claim()
        now = now_utc()
        for claim in claims:
            REFRESHER_LAG.observe(max(0.0, (now - claim.due_at).total_seconds()))
            self._queue.put_nowait(claim)
        if claims:
            await self._wait_until(
                lambda: self._queue.qsize() <= self._settings.refresher_concurrency
            )
        else:
            # Idle round: let the last refreshes land before the gauges are read.
            await self._wait_until(lambda: self._queue.empty() and self._busy == 0)
        # At most once a second: a GROUP BY over every connection per batch
        # would cost a busy refresher more than its claims.
        if time.monotonic() - self._gauges_at >= 1.0:
            self._gauges_at = time.monotonic()
            await self._update_gauges()
        return rows

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self._changed.clear()
            await self._changed.wait()

    async def _work(self) -> None:
        while True:
            claim = await self._queue.get()
            self._busy += 1
            self._changed.set()
            try:
                await self._refresh(claim)
            except asyncio.CancelledError:
                # A refresh this worker waited on was cancelled (drain at
                # shutdown), not the worker: it stays, or the queue stalls.
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                log.info("refresher: refresh of %s was cancelled", claim.held.row.id)
            finally:
                self._busy -= 1
                self._changed.set()

    async def _claim(self) -> tuple[list[Claim], int]:
        """The claims to refresh, and how many due rows the batch took (idle
        ones rescheduled included)."""
        owner = self._tokens.claims.owner
        # A claim is only as good as its owner's liveness lock (lease.py).
        await owner.ensure()
        at = time.monotonic()
        async with self._database() as db, db.begin():
            result = await db.execute(
                CLAIM_DUE,
                {
                    "batch": self._settings.refresher_batch_size,
                    "lease": self._lease_seconds,
                    "owner": owner.id,
                },
            )
            rows = result.all()
            claims: list[Claim] = []
            later: dict[uuid.UUID, datetime] = {}
            for row in rows:
                # The schedule decides (service.tokens.schedule), on the database's clock.
                until = self._schedule.kept_alive_until(
                    now=row.db_now,
                    last_used_at=row.last_used_at,
                    last_refreshed_at=row.last_refreshed_at,
                )
                if until is None:
                    locked = LockedRow(*row[:_ROW_FIELDS])
                    claims.append(Claim(HeldClaim(locked, at), row.due_at))
                else:
                    later[row.id] = until
            if later:
                await db.execute(_RESCHEDULE, {"ids": list(later), "ats": list(later.values())})
            # The batch counts idle rows too: a full one means more may be due.
            return claims, len(rows)

    async def _refresh(self, claim: Claim) -> None:
        connection_id = claim.held.row.id
        CONNECTION_ID.set(str(connection_id))  # each worker is its own task
        try:
            await self._tokens.refresh_claimed(claim.held)
        except (ConnectionNotFound, NeedsReauth, UpstreamUnavailable):
            pass  # recorded on the row by the broker; the schedule says what next
        except Exception:
            # One bad row must not stop the worker; its lease brings it back.
            log.exception("refresher: refreshing %s failed", connection_id)

    async def _update_gauges(self) -> None:
        async with self._database() as db:
            rows = (await db.execute(_SUMMARY)).all()
        soonest = None
        for status in ("active", "needs_reauth"):
            CONNECTIONS.labels(status=status).set(0)
        for row in rows:
            CONNECTIONS.labels(status=row.status).set(row.n)
            if row.status == "active":
                soonest = row.soonest
        if soonest is not None:
            SOONEST_EXPIRY.set((soonest - now_utc()).total_seconds())
