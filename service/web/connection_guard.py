"""Sockets that send nothing are closed, and connections are bounded.

uvicorn arms no timer until a first response is sent, so a socket that
connects and stays silent, or trickles its header lines (slowloris), holds a
file descriptor forever; with the process's open-files limit reached, the
server accepts nobody and logs nothing. uvicorn's ``limit_concurrency``
refuses only once a request's headers are in, which those sockets never
send. This protocol (uvicorn's own httptools one, plus two rules) closes a
connection whose request headers are not complete within the header timeout
of its first byte (or of connecting), and closes new connections beyond the
limit at once, saying so in the log (at most every few seconds).

Another server (Hypercorn, Granian) has such settings; keeping uvicorn keeps
the measured hot path, its lifespan and graceful shutdown as they are.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("service.serving")  # pinned: operators filter on it

_LOG_EVERY_SECONDS = 10.0


class _Refusals:
    """Connections refused for the limit, reported in one line now and then."""

    def __init__(self) -> None:
        self.count = 0
        self.logged_at = 0.0

    def note(self, limit: int) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.logged_at >= _LOG_EVERY_SECONDS:
            log.warning(
                "connection limit %d reached: %d new connection(s) closed", limit, self.count
            )
            self.logged_at = now
            self.count = 0


def guarded_protocol(*, header_timeout: float, max_connections: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a header timeout and a connection limit."""
    refusals = _Refusals()

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= max_connections:
                refusals.note(max_connections)
                transport.abort()
                return
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self.transport is None:  # refused in connection_made
                return
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_deadline = self.loop.call_later(header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _too_slow(self) -> None:
            self._header_deadline = None
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedHttpToolsProtocol


def open_files_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def default_max_connections(reserved: int) -> int:
    """What the open-files limit leaves after ``reserved`` descriptors (the
    database pool, Workfront's, logs): an accept beyond it would fail anyway."""
    return max(16, open_files_limit() - reserved)
