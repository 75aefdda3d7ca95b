"""The HTTP session every Workfront call goes through: TLS trust, proxy,
timeouts and connection limits, decided once when the broker starts.

aiohttp rather than httpx, which the rest of the service uses: a refresh is
one small POST, and httpx spent several times aiohttp's CPU per request
(bench/http_clients.py; figures in docs/benchmarks.md), so httpx alone could
not keep one core refreshing hundreds of connections a second.

Invariants:
- The environment (proxy variables, CA bundle) is read once, when the broker
  starts, never per request.
- No cookie jar: one user's Workfront cookies never ride along on another's call.
"""

from __future__ import annotations

import os
import ssl
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import aiohttp
import certifi

from service.config import Settings

USER_AGENT = "workfront-token-broker/0.1"


def _proxy_for(url: str) -> str | None:
    """The proxy HTTP(S)_PROXY / NO_PROXY name for ``url``, as httpx applied them.

    Resolved once: aiohttp's ``trust_env`` reads the environment and looks for
    a .netrc file on every request, a CPU cost per refresh (docs/benchmarks.md).
    """
    parts = urlsplit(url)
    if parts.hostname is None or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def tls_context() -> ssl.SSLContext:
    """The CA bundle named by SSL_CERT_FILE / SSL_CERT_DIR when set (OpenSSL reads
    them), else certifi's: the same trust httpx gave, whatever the image's own store."""
    if os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


@asynccontextmanager
async def open_session(settings: Settings) -> AsyncIterator[aiohttp.ClientSession]:
    """One aiohttp session for the broker's life, closed on the way out."""
    timeout = settings.upstream_timeout_seconds
    session = aiohttp.ClientSession(
        # A hard ceiling on one call, within it connect (pool wait included)
        # and each read bounded separately. A refresh's call has a longer one
        # of its own (WorkfrontClient.refresh).
        timeout=aiohttp.ClientTimeout(
            total=2 * timeout,
            connect=timeout,
            sock_connect=min(timeout, 5.0),
            sock_read=timeout,
        ),
        # Keep a connection alive for every refresh in flight (the
        # refresher's, and on-demand ones up to half the database pool):
        # beyond the limit a refresh would wait for a connection, and that
        # wait counts against its connect timeout.
        connector=aiohttp.TCPConnector(
            limit=max(settings.refresh_concurrency, settings.refresher_concurrency) + 16,
            limit_per_host=0,
            ssl=tls_context(),
        ),
        # Never carry one user's Workfront cookies into another's call.
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": USER_AGENT},
    )
    try:
        yield session
    finally:
        await session.close()
