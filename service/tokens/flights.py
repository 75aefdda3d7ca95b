"""Single-flight: concurrent callers of one connection share one refresh.

A refresh runs in a task of its own, shielded from its callers: a caller that
goes away must not cancel it, since abandoning a refresh between Workfront's
answer and our commit would lose a rotated token. ``drain`` settles the
flights at shutdown without losing a refresh token, in bounded time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from service.tokens.issued import Ask, IssuedToken

log = logging.getLogger("service.broker")  # pinned: operators filter on it

# The refresh a flight runs: (connection, what it was asked for, the future to
# resolve once Workfront has answered or will not be asked).
RefreshRun = Callable[[uuid.UUID, Ask, asyncio.Future[None]], Coroutine[Any, Any, IssuedToken]]


@dataclass(frozen=True, slots=True)
class Flight:
    """A refresh in progress in this process, and what it was asked for."""

    task: asyncio.Task[IssuedToken]
    ask: Ask
    # Done once Workfront has answered, or the refresh ended without asking it;
    # what may remain is storing the answer (see TokenIssuer.refresh_claimed).
    answered: asyncio.Future[None]


def resolve(answered: asyncio.Future[None]) -> None:
    if not answered.done():
        answered.set_result(None)


class Presenting:
    """Refresh tasks that have presented a refresh token and not yet committed:
    drain() waits for these instead of cancelling them."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def mark(self) -> None:
        """Called by a refresh right before it presents its refresh token."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def __contains__(self, task: object) -> bool:
        return task in self._tasks

    def __bool__(self) -> bool:
        return bool(self._tasks)


class Flights:
    def __init__(
        self,
        run: RefreshRun,
        *,
        presenting: Presenting,
        refresh_call_ceiling_seconds: float,
        held_claim_seconds: float,
    ) -> None:
        self._run = run
        self._presenting = presenting
        self._call_ceiling = refresh_call_ceiling_seconds
        self._flights: dict[uuid.UUID, Flight] = {}
        # When a flight of each connection last started or ended here: a row
        # the refresher's batch claimed before that may be stale (another
        # flight stored a newer session, or was storing one while the batch
        # read the row). Kept for as long as a held claim may be used.
        self._held_seconds = held_claim_seconds
        self._active_at: dict[uuid.UUID, float] = {}
        self._pruned_size = 1024

    def __contains__(self, connection_id: uuid.UUID) -> bool:
        return connection_id in self._flights

    async def join(self, connection_id: uuid.UUID, ask: Ask) -> IssuedToken:
        flight = await self.flight(connection_id, ask)
        # shield: a caller that goes away must not cancel a refresh in progress.
        return await asyncio.shield(flight.task)

    async def flight(self, connection_id: uuid.UUID, ask: Ask) -> Flight:
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
        ask = self._usable(connection_id, ask)
        self._note_active(connection_id)
        answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            self._run(connection_id, ask, answered), name=f"refresh-{connection_id}"
        )
        flight = Flight(task=task, ask=ask, answered=answered)
        self._flights[connection_id] = flight

        def forget(_: asyncio.Task[IssuedToken], current: Flight = flight) -> None:
            self._note_active(connection_id)
            if self._flights.get(connection_id) is current:
                del self._flights[connection_id]

        task.add_done_callback(forget)
        # Also when the task is cancelled before it ever ran.
        task.add_done_callback(lambda _: resolve(answered))
        return flight

    def _usable(self, connection_id: uuid.UUID, ask: Ask) -> Ask:
        """``ask`` without its held claim when the row it read may be stale:
        the refresh then reads and claims the row itself."""
        held = ask.held
        if held is None:
            return ask
        now = time.monotonic()
        last = self._active_at.get(connection_id)
        if now - held.at > self._held_seconds or (last is not None and last >= held.at):
            return dataclasses.replace(ask, held=None)
        return ask

    def _note_active(self, connection_id: uuid.UUID) -> None:
        now = time.monotonic()
        self._active_at[connection_id] = now
        if len(self._active_at) >= 2 * self._pruned_size:
            # Amortized: what is older than any usable held claim says nothing.
            self._active_at = {
                key: at for key, at in self._active_at.items() if now - at <= self._held_seconds
            }
            self._pruned_size = max(1024, len(self._active_at))

    async def drain(self) -> None:
        """Shut down refreshes in flight without losing a refresh token, in bounded time.

        A refresh that has not yet presented its refresh token (waiting for its
        turn or for another process's claim) is cancelled: its claim, if any,
        is released and Workfront never saw it. One that has presented it holds the rotated
        token in memory until it commits, so it is waited for, as long as one
        refresh's upstream call can take (Settings.refresh_call_ceiling_seconds),
        and only then cancelled.
        """
        for flight in list(self._flights.values()):
            if flight.task not in self._presenting:
                flight.task.cancel()
        waiting = [flight.task for flight in self._flights.values()]
        if not waiting:
            return
        within = self._call_ceiling + 5
        _, late = await asyncio.wait(waiting, timeout=within)
        for task in late:
            log.error("shutdown: a refresh still at Workfront or storing its answer was abandoned")
            task.cancel()
        if late:
            await asyncio.wait(late)
