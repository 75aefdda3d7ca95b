"""The hot path's memory: entries served for less than a second after their row was read.

A ``HotCache`` is a cachetools ``LRUCache`` (bounded entry count, least
recently used dropped first) of entries that each carry a deadline on the
monotonic clock: the moment their row's read *started* plus the lifetime
(``BROKER_HOT_CACHE_SECONDS``, under one second). The row's snapshot is no
older than that start, so an entry never outlives its data by more than the
lifetime, however slow the read was, and a change committed by any process
(a revoked key, a deleted connection, ``needs_reauth``) is seen everywhere
within a second.

Entries in use are kept warm without a query per request: a background round
(in the app's lifespan, two or more per lifetime) re-reads the rows of the
entries served in the last two rounds in one ``= ANY(...)`` query; an entry
whose row is unchanged gets a new deadline (an attribute store: a round over
thousands of entries is cheap and never stalls requests), a
changed row replaces it, a gone one drops it. Per process that is a few
queries a second however many reads it serves; a request finds its answer in
memory. (cachetools' TTLCache was the first version: re-storing every entry
each round stalled requests under load; docs/benchmarks.md has the figures.)

``local_change()`` is called when this process itself changes a row: a read
that started before it may not store what it saw (it could be older than the
change).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

from cachetools import LRUCache

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
R = TypeVar("R")


class Entry(Generic[K, V]):
    __slots__ = ("deadline", "key", "value")

    def __init__(self, key: K, value: V, deadline: float) -> None:
        self.key = key
        self.value = value
        self.deadline = deadline


class HotCache(Generic[K, V]):
    def __init__(self, *, seconds: float, max_entries: int) -> None:
        self.enabled = seconds > 0
        self.seconds = seconds
        self._entries: LRUCache[K, Entry[K, V]] = LRUCache(maxsize=max_entries)
        # Served since the last revalidation round, and in the round before:
        # an entry read a little less often than rounds come still stays warm.
        self._served: set[Entry[K, V]] = set()
        self._served_before: set[Entry[K, V]] = set()
        self._loading: dict[K, asyncio.Future[Any]] = {}
        self._changes = 0  # local_change() calls so far

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        if not self.enabled:
            return None
        entry = self._entries.get(key)
        if entry is None or entry.deadline <= time.monotonic():
            return None
        self._served.add(entry)
        return entry.value

    def store(self, key: K, value: V, *, read_started: float, changes_seen: int) -> None:
        """Keep ``value`` as read at ``read_started``, unless this process changed rows since."""
        if not self.enabled or changes_seen != self._changes:
            return
        self._entries[key] = Entry(key, value, read_started + self.seconds)

    def drop(self, key: K) -> None:
        self._entries.pop(key, None)

    def local_change(self, key: K | None = None) -> None:
        """This process changed ``key``'s row (or rows; None drops everything)."""
        self._changes += 1
        # A shared read in flight began before the change: a caller arriving
        # now must not join it and get the value this process just replaced.
        if key is None:
            self._entries.clear()
            self._loading.clear()
        else:
            self._entries.pop(key, None)
            self._loading.pop(key, None)

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

    def take_served(self) -> list[Entry[K, V]]:
        """The entries served in the last two rounds (for revalidation)."""
        served = self._served | self._served_before
        self._served_before, self._served = self._served, set()
        return list(served)

    def revalidated(
        self, entry: Entry[K, V], value: V | None, *, read_started: float, changes_seen: int
    ) -> None:
        """Revalidation's verdict on ``entry``: ``value`` as read at ``read_started``
        (the same object: unchanged; None: gone or no longer servable)."""
        if self._entries.get(entry.key) is not entry:
            return  # dropped or replaced meanwhile: that wins
        if value is entry.value:
            entry.deadline = read_started + self.seconds
        elif value is None:
            self._entries.pop(entry.key, None)
        else:
            self.store(entry.key, value, read_started=read_started, changes_seen=changes_seen)
