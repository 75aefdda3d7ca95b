"""Which background loops a serve process runs, started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from service.runtime import Runtime
from service.workers.cache_revalidation import run_cache_revalidation
from service.workers.refresher import Refresher
from service.workers.retention import run_retention
from service.workers.usage import run_usage_recording
from service.workers.webhooks import WebhookDeliverer


@dataclass
class Workers:
    # Stopped first at SIGTERM (see stop_new_work): they start new work.
    starting_work: list[asyncio.Task[None]] = field(default_factory=list)
    # Run until the end: requests still in flight use the hot caches.
    serving: list[asyncio.Task[None]] = field(default_factory=list)

    def stop_new_work(self) -> None:
        for task in self.starting_work:
            task.cancel()

    async def stop(self) -> None:
        self.stop_new_work()
        for task in self.serving:
            task.cancel()
        for task in (*self.starting_work, *self.serving):
            with contextlib.suppress(asyncio.CancelledError):
                await task


def start_workers(runtime: Runtime) -> Workers:
    settings = runtime.settings
    workers = Workers()
    if settings.refresher_enabled:
        refresher = Refresher(settings=settings, database=runtime.database, tokens=runtime.tokens)
        workers.starting_work.append(asyncio.create_task(refresher.run(), name="refresher"))
    if settings.event_retention_days > 0:
        retention = run_retention(runtime.database, retention_days=settings.event_retention_days)
        workers.starting_work.append(asyncio.create_task(retention, name="event-retention"))
    if settings.webhook_url is not None:
        deliverer = WebhookDeliverer(
            settings=settings, database=runtime.database, http=runtime.http
        )
        workers.starting_work.append(asyncio.create_task(deliverer.run(), name="webhooks"))
    usage = run_usage_recording(
        runtime.tokens.reads.usage, runtime.reader, flush_seconds=settings.usage_flush_seconds
    )
    workers.serving.append(asyncio.create_task(usage, name="usage"))
    if settings.hot_cache_seconds > 0:
        revalidation = run_cache_revalidation(
            runtime.authenticator, runtime.tokens, cache_seconds=settings.hot_cache_seconds
        )
        workers.serving.append(asyncio.create_task(revalidation, name="hot-cache"))
    return workers
