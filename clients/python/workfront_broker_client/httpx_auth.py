"""``BrokerAuth``: Workfront calls through httpx, sessions from the broker."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Generator

import httpx

from workfront_broker_client._rejection import body_worth_reading, session_rejected
from workfront_broker_client._session import SessionSource
from workfront_broker_client.errors import not_replayable

log = logging.getLogger("workfront_broker_client")


def _replayable(request: httpx.Request) -> bool:
    # Bytes (or nothing) can be sent again; a generator's content is gone.
    return isinstance(request.stream, httpx.ByteStream)


class BrokerAuth(httpx.Auth):
    """An ``httpx.Auth`` for ``httpx.Client`` and ``httpx.AsyncClient``.

    Puts the broker's session headers on every request. When Workfront says
    the session is no longer valid (a 401, or its AuthenticationException
    body whatever the status), the session is refreshed once (``If-Match``
    names the rejected one, so concurrent callers cause one refresh) and the
    request sent once more. Safe to share between threads and tasks.
    """

    requires_response_body = False  # a large answer streams through unread

    def __init__(
        self,
        broker_url: str,
        api_key: str,
        connection_id: str,
        *,
        min_ttl: int = 60,
        timeout: float = 30.0,
    ) -> None:
        self._source = SessionSource(
            broker_url, api_key, str(connection_id), min_ttl=min_ttl, timeout=timeout
        )

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        session = self._source.current()
        request.headers.update(session.headers)
        response = yield request
        body = response.read() if body_worth_reading(response.headers) else None
        if not session_rejected(response.status_code, body):
            return
        renewed = self._source.renewed(session)
        if not _replayable(request):
            raise not_replayable(request.method, request.url.path)
        request.headers.update(renewed.headers)
        response.close()
        yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        session = await self._source.acurrent()
        request.headers.update(session.headers)
        response = yield request
        body = await response.aread() if body_worth_reading(response.headers) else None
        if not session_rejected(response.status_code, body):
            return
        renewed = await self._source.arenewed(session)
        if not _replayable(request):
            raise not_replayable(request.method, request.url.path)
        request.headers.update(renewed.headers)
        await response.aclose()
        yield request

    def close(self) -> None:
        """Close the connections to the broker (threads)."""
        self._source.close()

    async def aclose(self) -> None:
        """Close the connections to the broker (tasks)."""
        await self._source.aclose()
