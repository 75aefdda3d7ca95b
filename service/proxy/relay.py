"""One proxied call: the connection's session added, Workfront called, and
once, when Workfront says that session is dead, a refresh and the call again.

* The session comes from the token path (service.tokens): from memory when
  warm, refreshed first when it has less than a minute left.
* A dead session (service.workfront.passthrough.names_dead_session) is
  refreshed with the condition "only if it is still the one that failed"
  (If-Match), so a hundred callers hitting one dead session cause one
  upstream refresh, and each sends its call once more. Only once: a second
  rejection goes back to the caller as Workfront gave it.
* A request body up to REPLAYABLE_BODY is read first, so the call can be
  sent again; a larger one goes to Workfront as it arrives and is never
  sent twice (its answer, a rejection included, goes back as it is).
* The answer is streamed back: at most LONGEST_ERROR_BODY of it is read
  first, and only when it may be a session error (JSON), so a 50 MB export
  passes through in chunks.
* Calls to one instance go through its gate (service.proxy.gate) for as
  long as Workfront is answering them, the streaming of the answer included.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

from service.config import Settings
from service.metrics import PROXY_RETRIES, PROXY_UPSTREAM_LATENCY, child
from service.proxy.gate import Gates
from service.proxy.headers import to_caller, to_workfront
from service.tokens.issued import IssuedToken
from service.tokens.issuer import TokenIssuer
from service.workfront.passthrough import (
    LONGEST_ERROR_BODY,
    may_name_dead_session,
    names_dead_session,
)
from service.workfront.protocol import API_ROOT, SESSION_HEADER

# Bodies up to this are read before the call, so it can be sent again after
# a refresh; larger ones are streamed and sent once.
REPLAYABLE_BODY = 1024 * 1024

BodyChunks = AsyncIterator[bytes]


class UpstreamFailed(Exception):
    """Workfront did not answer the proxied call (connection refused, timeout)."""


@dataclass(frozen=True, slots=True)
class ProxyRequest:
    connection_id: uuid.UUID
    instance: str  # the connection's instance (metrics, gate)
    method: str
    rest: str  # what follows attask/api/, checked (service.proxy.paths), as sent
    query: bytes  # as sent
    headers: list[tuple[bytes, bytes]] = field(repr=False)
    body: BodyChunks = field(repr=False)


@dataclass(slots=True)
class Relayed:
    """Workfront's answer, its body still to come (``chunks``); ``close`` when done."""

    status: int
    headers: list[tuple[bytes, bytes]]
    first: bytes  # what was read of the body already
    complete: bool  # ``first`` is the whole body
    _response: aiohttp.ClientResponse = field(repr=False)
    _leave: Callable[[], None] = field(repr=False)
    _closed: bool = False

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.first:
            yield self.first
        async for chunk in self._response.content.iter_any():
            yield chunk

    def discard(self) -> None:
        """Drop this answer but keep the gate's turn (for the call once more)."""
        self._response.release()

    def close(self) -> None:
        """Done with the answer: its connection and the gate's turn are given back."""
        if not self._closed:
            self._closed = True
            self._response.release()
            self._leave()


async def _read_some(body: BodyChunks, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of ``body`` (maybe a little more: whole chunks),
    and whether that was all of it."""
    parts: list[bytes] = []
    size = 0
    async for chunk in body:
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(parts), False
    return b"".join(parts), True


async def _then(first: bytes, rest: BodyChunks) -> BodyChunks:
    yield first
    async for chunk in rest:
        yield chunk


class Relay:
    def __init__(
        self, *, settings: Settings, tokens: TokenIssuer, http: aiohttp.ClientSession
    ) -> None:
        self._settings = settings
        self._tokens = tokens
        self._http = http
        self._bases = {
            name: instance.workfront_url + API_ROOT for name, instance in settings.instances.items()
        }
        self.gates = Gates(
            concurrency=settings.proxy_concurrency,
            queue=settings.proxy_queue,
            queue_timeout=settings.proxy_queue_timeout_seconds,
        )

    async def call(self, request: ProxyRequest, session: IssuedToken) -> Relayed:
        """Call Workfront with ``session``; once more with a refreshed one if it
        was dead and the body can be sent again. Raises GateClosed,
        UpstreamFailed, and the token path's errors (from the refresh)."""
        first, whole = await _read_some(request.body, REPLAYABLE_BODY)
        base = self._bases[request.instance]  # the connection's instance, and only it
        url = URL(
            base + request.rest + ("?" + request.query.decode("latin-1"))
            if request.query
            else base + request.rest,
            encoded=True,
        )
        gate = self.gates[request.instance]
        await gate.enter()
        try:
            if not whole:
                # Too large to keep: sent as it arrives, once.
                return await self._send(
                    request, url, session, _then(first, request.body), gate.leave, check=False
                )
            answer = await self._send(request, url, session, first, gate.leave, check=True)
            if not names_dead_session(answer.status, answer.first if answer.complete else None):
                return answer
            answer.discard()
            child(PROXY_RETRIES, request.instance).inc()
            session = await self._tokens.force_refresh(
                request.connection_id, if_match=frozenset({session.session_version})
            )
            return await self._send(request, url, session, first, gate.leave, check=False)
        except BaseException:
            gate.leave()
            raise

    async def _send(
        self,
        request: ProxyRequest,
        url: URL,
        session: IssuedToken,
        body: bytes | BodyChunks,
        leave: Callable[[], None],
        *,
        check: bool,
    ) -> Relayed:
        headers = to_workfront(
            request.headers,
            {SESSION_HEADER: session.session_id},
            streamed_length=not isinstance(body, bytes),
        )
        started = time.perf_counter()
        try:
            response = await self._http.request(
                request.method,
                url,
                headers=headers,
                data=body if body else None,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamFailed(type(exc).__name__) from None
        child(PROXY_UPSTREAM_LATENCY, request.instance).observe(time.perf_counter() - started)
        first, complete = b"", False
        try:
            if (
                check
                and response.status != 401
                and may_name_dead_session(response.headers.get("Content-Type", ""))
            ):
                first, complete = await _read_some(response.content.iter_any(), LONGEST_ERROR_BODY)
        except (aiohttp.ClientError, TimeoutError) as exc:
            response.release()
            raise UpstreamFailed(type(exc).__name__) from None
        return Relayed(
            status=response.status,
            headers=to_caller(response.headers.items()),
            first=first,
            complete=complete,
            _response=response,
            _leave=leave,
        )
