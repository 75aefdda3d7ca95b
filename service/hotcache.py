"""The hot path's memory: entries served for less than a second after their row was read.

A ``HotCache`` is a cachetools ``TTLCache`` (LRU, bounded entry count) whose
clock is pinned, when an entry is stored, to the moment the read *started*:
the row's snapshot is no older than that, so an entry never outlives its data
by more than the TTL, however slow the read was. With the TTL under one
second, a change committed by any process (a revoked key, a deleted
connection, ``needs_reauth``) is seen everywhere within a second.

Entries in use are kept warm without a query per request: a background round
(in the app's lifespan, two or more per cache lifetime) re-reads the rows of
the entries served in the last two rounds in one ``= ANY(...)`` query and
stores them again as of that query's start. Per process that is a few
queries a second however many reads it serves; a request finds its answer in
memory.

``local_change()`` is called when this process itself changes a row: a read
that started before it may not store what it saw (it could be older than the
change).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

from cachetools import TTLCache

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
R = TypeVar("R")


class _PinnableClock:
    """time.monotonic, or a fixed earlier time while an entry is being stored."""

    __slots__ = ("pinned",)

    def __init__(self) -> None:
        self.pinned: float | None = None

    def __call__(self) -> float:
        pinned = self.pinned
        return time.monotonic() if pinned is None else pinned


class HotCache(Generic[K, V]):
    def __init__(self, *, seconds: float, max_entries: int) -> None:
        self.enabled = seconds > 0
        self._clock = _PinnableClock()
        self._entries: TTLCache[K, V] = TTLCache(
            maxsize=max_entries, ttl=max(seconds, 1e-9), timer=self._clock
        )
        # Served since the last revalidation round, and in the round before:
        # an entry read a little less often than rounds come still stays warm.
        self._served: set[K] = set()
        self._served_before: set[K] = set()
        self._loading: dict[K, asyncio.Future[Any]] = {}
        self._changes = 0  # local_change() calls so far

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        if not self.enabled:
            return None
        value = self._entries.get(key)
        if value is not None:
            self._served.add(key)
        return value

    def store(self, key: K, value: V, *, read_started: float, changes_seen: int) -> None:
        """Keep ``value`` as read at ``read_started``, unless this process changed rows since."""
        if not self.enabled or changes_seen != self._changes:
            return
        self._clock.pinned = read_started
        try:
            self._entries[key] = value
        finally:
            self._clock.pinned = None

    def drop(self, key: K) -> None:
        self._entries.pop(key, None)

    def local_change(self, key: K | None = None) -> None:
        """This process changed ``key``'s row (or rows; None drops everything)."""
        self._changes += 1
        if key is None:
            self._entries.clear()
        else:
            self._entries.pop(key, None)

    def read_marker(self) -> tuple[float, int]:
        """Take before a read; pass to ``store`` after it."""
        return time.monotonic(), self._changes

    async def load(self, key: K, read: Callable[[], Awaitable[R]]) -> R:
        """One ``read`` per key at a time: concurrent misses share it (no stampede).

        The read runs as its own task, shielded: the caller that started it
        going away must not fail the others waiting for it.
        """
        task: asyncio.Future[R] | None = self._loading.get(key)
        if task is None:
            task = asyncio.ensure_future(read())
            self._loading[key] = task

            def done(finished: asyncio.Future[R]) -> None:
                if self._loading.get(key) is finished:
                    del self._loading[key]
                if not finished.cancelled():
                    finished.exception()  # retrieved, even if every waiter left

            task.add_done_callback(done)
        return await asyncio.shield(task)

    def replace(self, key: K, value: V) -> None:
        """This process just stored ``value`` (a refresh it committed).

        Served at once where the old value was in memory; a key nobody reads
        here is not brought in (the refresher renews thousands of sessions).
        """
        present = key in self._entries
        self.local_change(key)
        if present:
            started, changes = self.read_marker()
            self.store(key, value, read_started=started, changes_seen=changes)

    def take_served(self) -> dict[K, V]:
        """The entries served in the last two rounds, as they are now (for revalidation)."""
        served = self._served | self._served_before
        self._served_before, self._served = self._served, set()
        current = {}
        for key in served:
            value = self._entries.get(key)
            if value is not None:
                current[key] = value
        return current

    def refresh(
        self, key: K, seen: V, value: V | None, *, read_started: float, changes_seen: int
    ) -> None:
        """Revalidation's verdict on ``key``: ``value`` as read (None: gone).

        Only when the entry is still the one revalidated: a newer entry this
        process stored meanwhile, or a drop, wins.
        """
        if self._entries.get(key) is not seen:
            return
        if value is None:
            self._entries.pop(key, None)
            return
        self.store(key, value, read_started=read_started, changes_seen=changes_seen)
