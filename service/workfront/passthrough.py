"""Calls made as a connection's user through the broker's proxy: the HTTP
session they go over, and what Workfront's answer says of the session.

A separate aiohttp session from the broker's own calls (service.workfront.http):
its answers are streamed rather than read whole, its reads may wait longer
(an export can take a while to start), and its connections are bounded by the
proxy's gate per instance (service.proxy.gate), not by the refresh limits.
The same invariants: the environment is read once, and no cookie jar, so one
user's Workfront cookies never ride along on another's call.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from service.config import Settings
from service.workfront.http import USER_AGENT, tls_context

# An answer whose body may be Workfront's session error is read up to this
# much before it is passed on: error bodies are small, an export is not one.
LONGEST_ERROR_BODY = 64 * 1024
_AUTHENTICATION_CLASS = "AuthenticationException"
_NOT_LOGGED_IN = "not currently logged in"


@asynccontextmanager
async def open_passthrough_session(settings: Settings) -> AsyncIterator[aiohttp.ClientSession]:
    """One aiohttp session for the proxy's calls, for the broker's life."""
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(
            total=None,  # a 50 MB export takes as long as it takes
            connect=settings.upstream_timeout_seconds,
            sock_connect=min(settings.upstream_timeout_seconds, 5.0),
            sock_read=settings.proxy_timeout_seconds,
        ),
        # Bounded per instance by the proxy's gate, not here.
        connector=aiohttp.TCPConnector(limit=0, ssl=tls_context()),
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": USER_AGENT},
        # Workfront's answer goes to the caller as it is, but decoded: the
        # session check reads it, and callers need not speak gzip.
        auto_decompress=True,
    )
    try:
        yield session
    finally:
        await session.close()


def may_name_dead_session(content_type: str) -> bool:
    """Whether an answer of this type could be Workfront's session error (JSON)."""
    return "json" in content_type.lower()


def names_dead_session(status: int, body: bytes | None) -> bool:
    """Workfront says the session is no longer valid: a 401, or an error body
    naming AuthenticationException or "not currently logged in", whatever the
    status (``body``: the whole answer when it was small enough to read).

    The body must be an object whose ``error`` says so: a project that happens
    to be named "not currently logged in" is data, not an error.
    """
    if status == 401:
        return True
    if body is None or b"error" not in body:
        return False
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        return False
    named = f"{error.get('class', '')} {error.get('message', '')}"
    return _AUTHENTICATION_CLASS in named or _NOT_LOGGED_IN in named.lower()
