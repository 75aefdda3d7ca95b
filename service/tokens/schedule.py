"""When a connection is refreshed next: ahead of expiry while it is in use,
only to keep the grant alive while idle, or after a failure.

Pure arithmetic over the settings (plus jitter), so the refresher's load and
backoff can be reasoned about and tested without a database.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from service.clock import now_utc
from service.config import Settings


class RefreshSchedule:
    def __init__(self, settings: Settings) -> None:
        self._ahead = settings.refresh_ahead_seconds
        self._keep_warm = timedelta(seconds=settings.keep_warm_seconds)
        self._keep_alive = timedelta(seconds=settings.keep_alive_seconds)
        self._jitter_fraction = settings.refresh_jitter_fraction
        self._retry_base = settings.retry_base_seconds
        self._retry_max = settings.retry_max_seconds

    def next_refresh_at(
        self,
        expires_at: datetime,
        *,
        refreshed_at: datetime,
        last_used_at: datetime | None = None,
    ) -> datetime:
        """When the refresher should renew a session obtained at ``refreshed_at``.

        In use (``last_used_at`` within BROKER_KEEP_WARM_SECONDS, or None: a
        caller is asking right now): ahead of expiry, jittered earlier so
        connections made together do not refresh together forever. Idle: once
        BROKER_KEEP_ALIVE_SECONDS have passed, which keeps the grant alive; a
        read before then refreshes on demand and makes it warm again.
        """
        if last_used_at is not None and self.idle(last_used_at, at=refreshed_at):
            return refreshed_at + self._keep_alive
        jitter = random.uniform(0, self._ahead * self._jitter_fraction)  # noqa: S311
        return expires_at - timedelta(seconds=self._ahead + jitter)

    def idle(self, last_used_at: datetime, *, at: datetime) -> bool:
        """Nobody used the connection within BROKER_KEEP_WARM_SECONDS before ``at``."""
        return at - last_used_at > self._keep_warm

    def kept_alive_until(
        self, *, now: datetime, last_used_at: datetime, last_refreshed_at: datetime | None
    ) -> datetime | None:
        """For a connection come due: None to refresh it now, or, for an idle one
        whose grant was renewed recently enough, when its keep-alive refresh is due.

        (A connection scheduled ahead of expiry while warm comes due once more
        after going idle; it is only rescheduled.)
        """
        if not self.idle(last_used_at, at=now) or last_refreshed_at is None:
            return None
        due = last_refreshed_at + self._keep_alive
        return due if due > now else None

    def retry_at(self, failures: int, retry_after: float | None) -> datetime:
        """Exponential backoff with full jitter, never sooner than Retry-After."""
        ceiling = min(self._retry_max, self._retry_base * 2 ** min(failures, 20))
        delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311
        if retry_after is not None:
            delay = max(delay, retry_after)
        return now_utc() + timedelta(seconds=delay)


def needed_ttl(min_ttl: float, *, lifetime: float, ahead: float) -> float:
    """``min_ttl``, capped at what a refresh can be counted on to give.

    A session lives ``lifetime`` seconds (what Workfront said, or the assumed
    BROKER_SESSION_TTL_SECONDS); no refresh satisfies more, so a larger ask
    would refresh on every read, each answer again falling short. A session
    younger than the refresh-ahead margin (at most half its life) counts as
    the freshest there is: asking for more than it has left refreshes once
    per session, never once per read.
    """
    return min(min_ttl, lifetime - min(ahead, lifetime / 2))
