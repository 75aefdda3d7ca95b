"""When a connection is refreshed next (service.tokens.schedule): no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.clock import now_utc
from service.config import Settings
from service.crypto import generate_key
from service.tokens.schedule import RefreshSchedule, needed_ttl


def _schedule(**overrides: Any) -> RefreshSchedule:
    values: dict[str, Any] = {
        "workfront_url": "https://acme.my.workfront.com",
        "client_id": "app",
        "client_secret": "secret-of-the-app",
        "redirect_uri": "https://broker.example.com/oauth/callback",
        "encryption_keys": f"k1:{generate_key()}",
        **overrides,
    }
    return RefreshSchedule(Settings(_env_file=None, **values))


EXPIRES = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
OBTAINED = EXPIRES - timedelta(seconds=1800)


def test_next_refresh_is_ahead_of_expiry_within_the_jitter() -> None:
    schedule = _schedule(refresh_ahead_seconds=300, refresh_jitter_fraction=0.2)
    seen = {schedule.next_refresh_at(EXPIRES, refreshed_at=OBTAINED) for _ in range(200)}
    latest, earliest = EXPIRES - timedelta(seconds=300), EXPIRES - timedelta(seconds=360)
    assert all(earliest <= at <= latest for at in seen)
    assert len(seen) > 1  # jittered: connections made together spread out


def test_no_jitter_refreshes_exactly_ahead() -> None:
    schedule = _schedule(refresh_ahead_seconds=120, refresh_jitter_fraction=0)
    assert schedule.next_refresh_at(EXPIRES, refreshed_at=OBTAINED) == EXPIRES - timedelta(
        seconds=120
    )


@pytest.mark.parametrize(
    ("idle_for", "after"),
    [
        (None, timedelta(seconds=1500)),  # a caller is using it now: ahead of expiry
        (timedelta(days=1), timedelta(seconds=1500)),  # read yesterday: still warm
        (timedelta(days=7), timedelta(seconds=1500)),  # the window's edge is warm
        (timedelta(days=7, seconds=1), timedelta(days=1)),  # idle: keep-alive only
        (timedelta(days=300), timedelta(days=1)),
    ],
)
def test_idle_connections_are_only_kept_alive(idle_for: timedelta | None, after: timedelta) -> None:
    schedule = _schedule(
        refresh_ahead_seconds=300,
        refresh_jitter_fraction=0,
        keep_warm_seconds=7 * 86400,
        keep_alive_seconds=86400,
    )
    last_used = None if idle_for is None else OBTAINED - idle_for
    due = schedule.next_refresh_at(EXPIRES, refreshed_at=OBTAINED, last_used_at=last_used)
    assert due == OBTAINED + after


@pytest.mark.parametrize(("failures", "ceiling"), [(1, 10.0), (2, 20.0), (3, 40.0), (10, 300.0)])
def test_backoff_doubles_per_failure_up_to_the_cap(failures: int, ceiling: float) -> None:
    schedule = _schedule(retry_base_seconds=5, retry_max_seconds=300)
    for _ in range(50):
        before = now_utc()
        delay = (schedule.retry_at(failures, None) - before).total_seconds()
        assert ceiling / 2 - 0.1 <= delay <= ceiling + 0.1


def test_backoff_is_never_sooner_than_retry_after() -> None:
    schedule = _schedule(retry_base_seconds=5, retry_max_seconds=300)
    before = now_utc()
    assert (schedule.retry_at(1, 900.0) - before).total_seconds() >= 900 - 0.1


@pytest.mark.parametrize(
    ("min_ttl", "lifetime", "needed"),
    [
        (60, 1800, 60),  # an ordinary ask is honoured exactly
        (1500, 1800, 1500),
        (1800, 1800, 1500),  # more than a fresh session offers: the freshest
        (86_400, 1800, 1500),
        (86_400, 3600, 3300),  # Workfront said 3600: what a refresh gives counts
        (60, 60, 30),  # short sessions: fresh for half their life
        (0, 1800, 0),
    ],
)
def test_needed_ttl_never_exceeds_what_a_refresh_gives(
    min_ttl: int, lifetime: float, needed: float
) -> None:
    assert needed_ttl(min_ttl, lifetime=lifetime, ahead=300) == needed


@pytest.mark.parametrize(
    ("unused_for", "renewed_ago", "postponed"),
    [
        (timedelta(days=1), timedelta(hours=1), False),  # warm: refresh now
        (timedelta(days=8), timedelta(hours=1), True),  # idle, renewed lately: postpone
        (timedelta(days=8), timedelta(days=1, seconds=1), False),  # keep-alive due
        (timedelta(days=8), None, False),  # never recorded: refresh
    ],
)
def test_a_due_idle_connection_waits_for_its_keep_alive(
    unused_for: timedelta, renewed_ago: timedelta | None, postponed: bool
) -> None:
    schedule = _schedule(keep_warm_seconds=7 * 86400, keep_alive_seconds=86400)
    now = EXPIRES
    renewed = None if renewed_ago is None else now - renewed_ago
    until = schedule.kept_alive_until(
        now=now, last_used_at=now - unused_for, last_refreshed_at=renewed
    )
    if postponed:
        assert renewed is not None
        assert until == renewed + timedelta(days=1)
    else:
        assert until is None
