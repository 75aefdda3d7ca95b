"""The session a process holds for one connection, and the broker calls behind it.

One source per (broker, key, connection), shared by every thread and task
that uses it: a session is fetched once and kept until ``min_ttl`` before it
expires; concurrent callers wait for the one broker call in flight instead of
each making their own, threads and tasks alike: one lock guards the broker
calls, which threads wait for and tasks (one at a time, behind a lock of
their loop's) take without blocking their event loop. A session Workfront
rejected is refreshed with
``If-Match`` naming it, so callers who saw the same session die cause one
refresh, at the broker too.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from workfront_broker_client.errors import BrokerError, BrokerUnavailable, NeedsReauth

_SyncSend = Callable[[httpx.Client], httpx.Response]


@dataclass(frozen=True)
class Session:
    """A Workfront session as the broker handed it out."""

    headers: dict[str, str] = field(repr=False)  # to put on Workfront calls
    etag: str  # names this session (If-Match when it is rejected)
    expires_ts: float  # POSIX seconds
    workfront_url: str


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return float(value)
    except ValueError:
        return None


def _unreachable(exc: httpx.TransportError) -> BrokerUnavailable:
    return BrokerUnavailable(
        f"the broker is unreachable ({type(exc).__name__})", retry_after=None, status=None
    )


def parse_answer(response: httpx.Response, connection_id: str) -> Session:
    """The session in a token answer, or the error it is instead."""
    status = response.status_code
    if status == 200:
        body = response.json()
        expires = datetime.fromisoformat(body["expires_at"]).timestamp()
        headers = body.get("headers") or {"sessionID": body["session_id"]}
        return Session(
            headers=dict(headers),
            etag=response.headers.get("etag", ""),
            expires_ts=expires,
            workfront_url=body["workfront_url"],
        )
    if status == 409:
        raise NeedsReauth(connection_id)
    if status == 503:
        raise BrokerUnavailable(
            "the broker cannot reach Workfront and holds no usable session",
            retry_after=_retry_after(response),
            status=status,
        )
    detail = ""
    if response.headers.get("content-type", "").startswith("application/problem+json"):
        detail = str(response.json().get("detail", ""))
    raise BrokerError(f"the broker answered {status}: {detail}".rstrip(": "), status=status)


class SessionSource:
    def __init__(
        self,
        broker_url: str,
        api_key: str,
        connection_id: str,
        *,
        min_ttl: int,
        timeout: float,
    ) -> None:
        self.connection_id = connection_id
        self._min_ttl = min_ttl
        self._base = broker_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._timeout = timeout
        self._session: Session | None = None
        self._thread_lock = threading.Lock()
        self._sync_client: httpx.Client | None = None
        self._task_lock: asyncio.Lock | None = None
        self._async_client: httpx.AsyncClient | None = None

    @property
    def _token_url(self) -> str:
        return f"{self._base}/v1/connections/{self.connection_id}/token"

    @property
    def _refresh_url(self) -> str:
        return f"{self._base}/v1/connections/{self.connection_id}/refresh"

    def _usable(self) -> Session | None:
        session = self._session
        if session is not None and session.expires_ts - time.time() > self._min_ttl:
            return session
        return None

    def _refresh_headers(self, rejected: Session) -> dict[str, str]:
        return {**self._auth, "If-Match": rejected.etag} if rejected.etag else self._auth

    # Threads -----------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        if self._sync_client is None:
            self._sync_client = httpx.Client(timeout=self._timeout)
        return self._sync_client

    def current(self) -> Session:
        """The session to use now (the broker asked only when there is none left)."""
        usable = self._usable()
        if usable is not None:
            return usable
        with self._thread_lock:
            usable = self._usable()
            if usable is None:
                usable = self._call(
                    lambda c: c.get(self._token_url, headers=self._auth, params=self._min_ttl_param)
                )
            return usable

    def renewed(self, rejected: Session) -> Session:
        """A session in place of ``rejected``: a newer one another caller got,
        or one refreshed now."""
        with self._thread_lock:
            held = self._session
            if held is not None and held.etag != rejected.etag:
                return held
            return self._call(
                lambda c: c.post(self._refresh_url, headers=self._refresh_headers(rejected))
            )

    def _call(self, send: _SyncSend) -> Session:
        try:
            response = send(self._client())
        except httpx.TransportError as exc:
            raise _unreachable(exc) from None
        return self._keep(response)

    def _keep(self, response: httpx.Response) -> Session:
        self._session = parse_answer(response, self.connection_id)
        return self._session

    @property
    def _min_ttl_param(self) -> dict[str, int]:
        return {"min_ttl": self._min_ttl}

    # Tasks -------------------------------------------------------------------------

    def _async(self) -> tuple[httpx.AsyncClient, asyncio.Lock]:
        if self._async_client is None or self._task_lock is None:
            self._async_client = httpx.AsyncClient(timeout=self._timeout)
            self._task_lock = asyncio.Lock()
        return self._async_client, self._task_lock

    async def _take_thread_lock(self) -> None:
        """Take the lock threads wait on, without blocking the event loop: a
        thread's broker call in flight is waited for, not repeated."""
        # Polled: a threading.Lock has no awaitable form, and acquiring it in a
        # worker thread would leave it held if this task were cancelled meanwhile.
        while not self._thread_lock.acquire(blocking=False):  # noqa: ASYNC110
            await asyncio.sleep(0.002)

    async def acurrent(self) -> Session:
        usable = self._usable()
        if usable is not None:
            return usable
        client, lock = self._async()
        async with lock:
            await self._take_thread_lock()
            try:
                usable = self._usable()
                if usable is None:
                    usable = await self._acall(
                        client.get(self._token_url, headers=self._auth, params=self._min_ttl_param)
                    )
                return usable
            finally:
                self._thread_lock.release()

    async def arenewed(self, rejected: Session) -> Session:
        client, lock = self._async()
        async with lock:
            await self._take_thread_lock()
            try:
                held = self._session
                if held is not None and held.etag != rejected.etag:
                    return held
                return await self._acall(
                    client.post(self._refresh_url, headers=self._refresh_headers(rejected))
                )
            finally:
                self._thread_lock.release()

    async def _acall(self, sending: Coroutine[Any, Any, httpx.Response]) -> Session:
        try:
            response = await sending
        except httpx.TransportError as exc:
            raise _unreachable(exc) from None
        return self._keep(response)

    def close(self) -> None:
        if self._sync_client is not None:
            self._sync_client.close()
            self._sync_client = None

    async def aclose(self) -> None:
        if self._async_client is not None:
            await self._async_client.aclose()
            self._async_client = None
            self._task_lock = None
