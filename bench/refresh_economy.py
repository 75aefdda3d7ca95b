"""Benchmark 6: refreshes a day, and what a SIGKILL costs, under a stated use mix.

Every refresh of a rotating refresh token stands in the crash window: between
Workfront's answer and our commit a SIGKILL loses the new token, and the user
must connect again. The policy decides how often a connection stands in it.

The mix (of 100,000 connections; simulated on BENCH_ECONOMY_CONNECTIONS,
20,000 by default, in the same proportions: the figures are per connection):
5 % read every minute, 5 % read about once a day (both within the keep-warm
window), 90 % idle for longer (last read 30 days ago). One simulated day
after half a day of warm-up, driven by the broker's own policy functions
(service.tokens.schedule: next_refresh_at, kept_alive_until, needed_ttl)
as the refresher, the usage recorder and the token read apply them:

- before: today's policy until this change, every connection kept warm
  (BROKER_KEEP_WARM_SECONDS very large);
- after: the defaults, warm for 7 days, then kept alive once a day.

Reported: upstream refreshes per day per 1,000 connections (target: at least
5 x fewer after), reads of a warm connection that had to wait for a refresh
(target: none more than before), and the refreshes expected in flight at a
random instant for 100,000 connections (Little's law: refresh rate x the
window one refresh stands in). The window is measured: forced refreshes
through a real broker against the emulator answering in BENCH_UPSTREAM_MS
(100 ms), from request to answer (an upper bound: the window closes at the
commit, before the answer is sent).
"""

from __future__ import annotations

import asyncio
import heapq
import os
import random
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from common import (
    CLIENT_ID,
    CLIENT_SECRET,
    BrokerConfig,
    api_key,
    fresh_database,
    header,
    seed_connections,
    start_emulator,
    stopping,
    verdict,
)

from service.config import Settings
from service.crypto import generate_key
from service.tokens.schedule import RefreshSchedule, needed_ttl

CONNECTIONS = int(os.environ.get("BENCH_ECONOMY_CONNECTIONS", "20000"))
UPSTREAM_MS = float(os.environ.get("BENCH_UPSTREAM_MS", "100"))
DAY = 86_400.0
WARM_UP = DAY / 2
SCALE = 100_000
MIN_TTL = 60  # the token read's default

_REFRESH, _READ = 0, 1


@dataclass
class _Connection:
    expires: float
    refreshed: float
    used: float
    due: float
    read_every: float | None  # seconds between reads, None: never read


@dataclass
class _Figures:
    refreshes: int
    waited_reads: int
    warm_reads: int


def _settings(**overrides: Any) -> Settings:
    return Settings(
        _env_file=None,
        workfront_url="https://acme.my.workfront.com",
        client_id="bench",
        client_secret="bench-secret-of-the-app",
        redirect_uri="https://broker.example.com/oauth/callback",
        encryption_keys=f"k1:{generate_key()}",
        **overrides,
    )


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _mix(count: int, rng: random.Random) -> list[_Connection]:
    """Sessions obtained at random times in the last lifetime, as after a while of use."""
    made = []
    for n in range(count):
        share = n / count
        if share < 0.05:
            read_every: float | None = 60.0
            used = -rng.uniform(0, 60)
        elif share < 0.10:
            read_every = DAY
            used = -rng.uniform(0, DAY)
        else:
            read_every = None
            used = -30 * DAY
        refreshed = -rng.uniform(0, 1500)
        made.append(_Connection(refreshed + 1800, refreshed, used, refreshed + 1500, read_every))
    return made


def _simulate(settings: Settings, seed: int) -> _Figures:
    """One day after the warm-up, the policy as the broker applies it."""
    schedule = RefreshSchedule(settings)
    ttl, ahead = settings.session_ttl_seconds, settings.refresh_ahead_seconds
    keep_warm = settings.keep_warm_seconds
    rng = random.Random(seed)
    connections = _mix(CONNECTIONS, rng)
    events: list[tuple[float, int, int]] = []
    for index, connection in enumerate(connections):
        heapq.heappush(events, (connection.due, _REFRESH, index))
        if connection.read_every is not None:
            first = connection.used + connection.read_every
            heapq.heappush(events, (max(first, 0.0), _READ, index))
    end = WARM_UP + DAY
    figures = _Figures(0, 0, 0)

    def refresh(connection: _Connection, now: float, *, proactive: bool) -> None:
        connection.refreshed, connection.expires = now, now + ttl
        last_used = _at(connection.used) if proactive else None
        due = schedule.next_refresh_at(
            _at(connection.expires), refreshed_at=_at(now), last_used_at=last_used
        )
        connection.due = due.timestamp()
        heapq.heappush(events, (connection.due, _REFRESH, index))
        if now >= WARM_UP:
            figures.refreshes += 1

    while events:
        now, kind, index = heapq.heappop(events)
        if now >= end:
            break
        connection = connections[index]
        if kind == _REFRESH:
            if now != connection.due:
                continue  # superseded by a later schedule
            until = schedule.kept_alive_until(
                now=_at(now),
                last_used_at=_at(connection.used),
                last_refreshed_at=_at(connection.refreshed),
            )
            if until is not None:
                connection.due = until.timestamp()
                heapq.heappush(events, (connection.due, _REFRESH, index))
            else:
                refresh(connection, now, proactive=True)
            continue
        # A read: recorded as use (service.tokens.usage), which brings an
        # idle connection's next refresh forward to ahead of expiry.
        was_idle = now - connection.used > keep_warm
        connection.used = now
        lifetime = connection.expires - connection.refreshed
        if connection.expires - now < needed_ttl(MIN_TTL, lifetime=lifetime, ahead=ahead):
            if now >= WARM_UP:
                figures.waited_reads += 1
            refresh(connection, now, proactive=False)
        elif was_idle and connection.expires - ahead < connection.due:
            connection.due = connection.expires - ahead
            heapq.heappush(events, (connection.due, _REFRESH, index))
        if now >= WARM_UP:
            figures.warm_reads += 1
        assert connection.read_every is not None
        heapq.heappush(events, (now + connection.read_every, _READ, index))
    return figures


async def _refresh_window_seconds() -> float:
    """Median time of one forced refresh through a real broker (request to answer)."""
    emulator = await start_emulator(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, latency_ms=UPSTREAM_MS
    )
    with stopping(emulator):
        async with fresh_database() as database_url:
            config = BrokerConfig(database_url=database_url, emulator_url=emulator.url)
            ids = await seed_connections(config, 10)
            broker = await config.serve(BROKER_REFRESHER_ENABLED="false")
            with stopping(broker):
                key = await api_key(broker.url, "tokens:read")
                headers = {"Authorization": f"Bearer {key}"}
                took = []
                async with httpx.AsyncClient(base_url=broker.url, timeout=30) as client:
                    for round_ in range(6):
                        for cid in ids:
                            seen = await client.get(f"/v1/connections/{cid}/token", headers=headers)
                            started = time.perf_counter()
                            answer = await client.post(
                                f"/v1/connections/{cid}/refresh",
                                headers={**headers, "If-Match": seen.headers["etag"]},
                            )
                            answer.raise_for_status()
                            if round_ > 0:  # the first round warms up connections
                                took.append(time.perf_counter() - started)
    return statistics.median(took)


async def main() -> None:
    header(
        f"6. refresh economy: the use mix of {SCALE:,} connections"
        f" (simulated on {CONNECTIONS:,}), one day; upstream {UPSTREAM_MS:.0f} ms"
    )
    started = time.monotonic()
    before = _simulate(_settings(keep_warm_seconds=100 * 365 * DAY), seed=1)
    after = _simulate(_settings(), seed=1)
    simulated = time.monotonic() - started
    window = await _refresh_window_seconds()
    per_1000 = {name: f.refreshes * 1000 / CONNECTIONS for name, f in (("b", before), ("a", after))}
    in_flight = {name: per * SCALE / 1000 / DAY * window for name, per in per_1000.items()}
    fewer = per_1000["b"] / per_1000["a"]
    print(
        f"  simulated in {simulated:.1f} s; one refresh's window measured at"
        f" {window * 1000:.0f} ms (median, request to answer)"
    )
    verdict(
        "refresh_economy",
        "upstream refreshes per day per 1,000 connections: >= 5x fewer than keeping all warm",
        f"{per_1000['a']:,.0f} ({fewer:.1f}x fewer)",
        fewer >= 5,
        baseline=f"{per_1000['b']:,.0f} (all kept warm)",
    )
    verdict(
        "refresh_economy",
        f"refreshes in flight at a random instant, {SCALE:,} connections (what a SIGKILL costs)",
        f"{in_flight['a']:.2f}",
        None,
        baseline=f"{in_flight['b']:.2f}",
    )
    verdict(
        "refresh_economy",
        "reads of a warm connection that waited for a refresh: none more than before",
        f"{after.waited_reads} of {after.warm_reads:,}",
        after.waited_reads <= before.waited_reads,
        baseline=f"{before.waited_reads} of {before.warm_reads:,}",
    )


if __name__ == "__main__":
    asyncio.run(main())
