"""When a connection is refreshed next: ahead of expiry, or after a failure.

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
        self._jitter_fraction = settings.refresh_jitter_fraction
        self._retry_base = settings.retry_base_seconds
        self._retry_max = settings.retry_max_seconds

    def next_refresh_at(self, expires_at: datetime) -> datetime:
        """When the refresher should renew: ahead of expiry, jittered earlier
        so connections made together do not refresh together forever."""
        jitter = random.uniform(0, self._ahead * self._jitter_fraction)  # noqa: S311
        return expires_at - timedelta(seconds=self._ahead + jitter)

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
