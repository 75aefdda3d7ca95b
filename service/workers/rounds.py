"""The shape every background loop shares: work in rounds, back off when the database is away."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import asyncpg
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger("service.background")  # pinned: operators filter on it
# The refresh's statements run on asyncpg itself (service.tokens.lease).
_DATABASE_ERRORS = (SQLAlchemyError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)

MAX_BACKOFF_SECONDS = 60.0


async def run_rounds(
    name: str, round_: Callable[[], Awaitable[bool]], *, poll_seconds: float
) -> None:
    """Call ``round_`` until cancelled.

    A round returns True when there may be more work at once (a full batch),
    else the loop sleeps a jittered poll interval. Database trouble backs off
    exponentially and never ends the loop, so it recovers by itself.
    """
    failures = 0
    while True:
        try:
            busy = await round_()
            failures = 0
        except Exception as exc:
            # Nothing ends the loop but cancellation: a database outage is
            # expected and logged briefly, anything else with its traceback.
            failures += 1
            delay = min(MAX_BACKOFF_SECONDS, poll_seconds * 2 ** min(failures, 16))
            if isinstance(exc, _DATABASE_ERRORS):
                log.warning(
                    "%s: database unavailable (%s), retry in %.0fs",
                    name,
                    type(exc).__name__,
                    delay,
                )
            else:
                log.exception("%s: round failed, retry in %.0fs", name, delay)
            await asyncio.sleep(delay)
            continue
        if not busy:
            await asyncio.sleep(random.uniform(0.5 * poll_seconds, poll_seconds))  # noqa: S311
