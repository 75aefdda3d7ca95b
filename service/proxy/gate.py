"""How many proxied calls go to one Workfront instance at once, per process.

Workfront limits each customer's concurrent API requests and answers 429
past it; the gate keeps this process under BROKER_PROXY_CONCURRENCY calls
per instance. A call beyond it waits its turn (first come, first served),
but only so many wait (BROKER_PROXY_QUEUE) and only so long
(BROKER_PROXY_QUEUE_TIMEOUT_SECONDS): past either the caller is told to come
back, rather than piling up requests (and their bodies) here.
"""

from __future__ import annotations

import asyncio


class GateClosed(Exception):
    """No turn for this call: ``status`` 429 (too many waiting) or 503 (waited too long)."""

    def __init__(self, status: int, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


class InstanceGate:
    def __init__(self, *, concurrency: int, queue: int, queue_timeout: float) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._queue = queue
        self._queue_timeout = queue_timeout
        self._waiting = 0

    async def enter(self) -> None:
        """Take a turn (pair with ``leave``); GateClosed when none is to be had."""
        if not self._slots.locked():
            await self._slots.acquire()  # free: no wait
            return
        if self._waiting >= self._queue:
            raise GateClosed(
                429, "too many calls to this Workfront instance are waiting; retry shortly", 1
            )
        self._waiting += 1
        try:
            async with asyncio.timeout(self._queue_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise GateClosed(
                503,
                "calls to this Workfront instance are queued for too long; retry shortly",
                max(1, round(self._queue_timeout / 2)),
            ) from None
        finally:
            self._waiting -= 1

    def leave(self) -> None:
        self._slots.release()


class Gates:
    """One gate per instance, made on first use."""

    def __init__(self, *, concurrency: int, queue: int, queue_timeout: float) -> None:
        self._concurrency = concurrency
        self._queue = queue
        self._queue_timeout = queue_timeout
        self._gates: dict[str, InstanceGate] = {}

    def __getitem__(self, instance: str) -> InstanceGate:
        gate = self._gates.get(instance)
        if gate is None:
            gate = self._gates[instance] = InstanceGate(
                concurrency=self._concurrency, queue=self._queue, queue_timeout=self._queue_timeout
            )
        return gate
