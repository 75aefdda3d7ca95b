"""The Workfront client: the only code that talks to the instance.

Every call goes to the configured instance (never to a host taken from a
callback). Failures become typed errors so callers can tell a transient
failure (keep the tokens, try again later) from a revoked grant (the user must
authorize again; never present that refresh token again).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import re
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import certifi

from service.clock import now_utc
from service.config import Settings
from service.metrics import UPSTREAM_LATENCY

log = logging.getLogger("service.workfront")  # pinned: operators filter on it

TOKEN_PATH = "/integrations/oauth2/api/v1/token"
AUTHORIZE_PATH = "/integrations/oauth2/authorize"
_TRANSIENT_STATUSES = {408, 429}
# Bounds of what we store from upstream answers (the columns' sizes).
MAX_SESSION_SECONDS = 366 * 86_400.0
MAX_ID_CHARS = 255
MAX_USER_ID_CHARS = 64
_MAX_DIAGNOSTIC_CHARS = 300
# Anything that looks like a token: long runs of token characters.
_TOKENISH = re.compile(r"[A-Za-z0-9_\-.~+/=]{20,}")


class WorkfrontError(Exception):
    """Base of every upstream failure. ``detail`` is safe to log and store."""

    def __init__(self, detail: str, *, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


class TransientError(WorkfrontError):
    """Network, timeout, 5xx, 408 or 429: the grant is intact, try again later."""

    def __init__(
        self, detail: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(detail, status=status)
        self.retry_after = retry_after


class ClientCredentialsRejected(TransientError):
    """The token endpoint named our client credentials invalid: a configuration
    problem that leaves every grant intact (retried with backoff)."""


class GrantRevokedError(WorkfrontError):
    """Any other 4xx from the token endpoint: the code or refresh token is dead."""


class SessionRejectedError(WorkfrontError):
    """The API refused a sessionID (401): the session is gone, the grant may be fine."""


@dataclass(frozen=True, slots=True)
class TokenSet:
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: datetime
    wid: str | None


@dataclass(frozen=True, slots=True)
class WorkfrontUser:
    user_id: str
    customer_id: str | None


def redact(text: str, *secrets: str | None) -> str:
    """Shorten an upstream body for diagnosis, removing secrets and token-like strings."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = _TOKENISH.sub("[redacted]", text)
    return text[:_MAX_DIAGNOSTIC_CHARS]


@dataclass(frozen=True, slots=True)
class _Answer:
    """An upstream answer, read whole while its connection was held."""

    status: int
    headers: Mapping[str, str]
    body: bytes = field(repr=False)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not (the stdlib parser: it
        accepts what Workfront might send, NaN included, that stricter ones refuse)."""
        return json.loads(self.body)


def _names_invalid_client(response: _Answer) -> bool:
    """Whether an error answer says ``{"error": "invalid_client"}`` (RFC 6749 §5.2)."""
    try:
        payload = response.json()
    except ValueError:
        return False
    return isinstance(payload, dict) and payload.get("error") == "invalid_client"


def pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _retry_after(response: _Answer) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _proxy_for(url: str) -> str | None:
    """The proxy HTTP(S)_PROXY / NO_PROXY name for ``url``, as httpx applied them.

    Resolved once: aiohttp's ``trust_env`` reads the environment and looks for
    a .netrc file on every request, which cost about 1 ms of CPU per refresh.
    """
    parts = urlsplit(url)
    if parts.hostname is None or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def _tls_context() -> ssl.SSLContext:
    """The CA bundle named by SSL_CERT_FILE / SSL_CERT_DIR when set (OpenSSL reads
    them), else certifi's: the same trust httpx gave, whatever the image's own store."""
    if os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


class WorkfrontClient:
    """Calls to the instance over one aiohttp session (see ``open``).

    aiohttp rather than httpx, which the rest of the service uses: a refresh
    is one small POST, and on the benchmark machine httpx spent 2.9-3.7 ms of
    CPU per request against aiohttp's 0.4-0.6 ms (bench/http_clients.py), so
    httpx alone could not keep one core refreshing 512 connections a second.
    """

    def __init__(self, settings: Settings, http: aiohttp.ClientSession) -> None:
        self._settings = settings
        self._http = http
        self._base = settings.workfront_url
        self._api = f"{self._base}/attask/api/{settings.workfront_api_version}"
        self._token_url = f"{self._base}{TOKEN_PATH}"
        self._proxy = _proxy_for(self._base)
        secret = settings.client_secret.get_secret_value()
        basic = base64.b64encode(f"{settings.client_id}:{secret}".encode()).decode()
        # Built once: per-request auth objects cost more than the request.
        self._basic_auth = {"Authorization": f"Basic {basic}"}

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[WorkfrontClient]:
        timeout = settings.upstream_timeout_seconds
        session = aiohttp.ClientSession(
            # A hard ceiling on one call (Broker.drain waits this long for a
            # refresh that presented its token), within it connect (pool wait
            # included) and each read bounded separately.
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
                limit=max(100, settings.refresher_concurrency, settings.db_pool_size // 2) + 16,
                limit_per_host=0,
                ssl=_tls_context(),
            ),
            # Never carry one user's Workfront cookies into another's call.
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": "workfront-token-broker/0.1"},
        )
        try:
            yield cls(settings, session)
        finally:
            await session.close()

    async def _call(self, method: str, url: str, *, what: str, **kwargs: Any) -> _Answer:
        """One request, read whole; network failures and timeouts as TransientError."""
        try:
            async with self._http.request(
                method, url, allow_redirects=False, proxy=self._proxy, **kwargs
            ) as response:
                body = await response.read()
                return _Answer(response.status, response.headers, body)
        except TimeoutError:
            raise TransientError(f"{what} timed out") from None
        except aiohttp.ClientError as exc:
            raise TransientError(f"{what} unreachable ({type(exc).__name__})") from None

    # Authorize ---------------------------------------------------------------

    def authorize_url(self, *, state: str, code_challenge: str | None = None) -> str:
        params = {
            "client_id": self._settings.client_id,
            "redirect_uri": self._settings.redirect_uri,
            "response_type": "code",
            "state": state,
        }
        if code_challenge is not None:
            params["code_challenge"] = code_challenge
            params["code_challenge_method"] = "S256"
        return f"{self._base}{AUTHORIZE_PATH}?{urlencode(params)}"

    # Token endpoint ----------------------------------------------------------

    async def exchange_code(self, code: str, *, code_verifier: str | None = None) -> TokenSet:
        fields = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self._settings.redirect_uri,
        }
        if code_verifier is not None:
            fields["code_verifier"] = code_verifier
        return await self._token_request(fields, secret=code, previous_refresh_token=None)

    async def refresh(self, refresh_token: str) -> TokenSet:
        fields = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if self._settings.token_auth == "form":
            # The documented form-style refresh carries redirect_uri too.
            fields["redirect_uri"] = self._settings.redirect_uri
        return await self._token_request(
            fields, secret=refresh_token, previous_refresh_token=refresh_token
        )

    async def _token_request(
        self, fields: dict[str, str], *, secret: str, previous_refresh_token: str | None
    ) -> TokenSet:
        client_secret = self._settings.client_secret.get_secret_value()
        started = time.monotonic()
        try:
            if self._settings.token_auth == "basic_json":
                response = await self._call(
                    "POST",
                    self._token_url,
                    what="token endpoint",
                    data=json.dumps(fields).encode(),
                    headers={**self._basic_auth, "Content-Type": "application/json"},
                )
            else:
                form = {
                    **fields,
                    "client_id": self._settings.client_id,
                    "client_secret": client_secret,
                }
                response = await self._call(
                    "POST", self._token_url, what="token endpoint", data=form
                )
        finally:
            UPSTREAM_LATENCY.labels(call="token").observe(time.monotonic() - started)

        status = response.status
        if status >= 500 or status in _TRANSIENT_STATUSES:
            raise TransientError(
                f"token endpoint answered {status}",
                status=status,
                retry_after=_retry_after(response),
            )
        if status >= 400:
            body = redact(response.text, secret, client_secret)
            if _names_invalid_client(response):
                # Our app's credentials were refused, not the user's grant: the
                # request was not processed, so the tokens stay good. Marking
                # every connection needs_reauth over a mistyped secret would
                # make every user connect again.
                log.error(
                    "Workfront refused the app's client credentials: check "
                    "BROKER_CLIENT_ID and BROKER_CLIENT_SECRET"
                )
                raise ClientCredentialsRejected(
                    f"token endpoint refused the client credentials ({status})", status=status
                )
            raise GrantRevokedError(f"token endpoint answered {status}: {body}", status=status)
        if status != 200:
            raise TransientError(f"token endpoint answered {status}", status=status)
        try:
            payload = response.json()
        except ValueError:
            raise TransientError("token endpoint answered 200 with a non-JSON body") from None
        return self._token_set(payload, previous_refresh_token=previous_refresh_token)

    def _token_set(self, payload: Any, *, previous_refresh_token: str | None) -> TokenSet:
        if not isinstance(payload, dict):
            raise TransientError("token response is not a JSON object")
        access = payload.get("access_token")
        if not isinstance(access, str) or not access:
            raise TransientError("token response has no access_token")
        refresh = payload.get("refresh_token")
        if not isinstance(refresh, str) or not refresh:
            # Rotation off: Workfront may omit or repeat it; keep the old one.
            if previous_refresh_token is None:
                raise TransientError("token response has no refresh_token")
            refresh = previous_refresh_token
        # After a 200 the new refresh token must reach the database whatever
        # else the answer holds: odd values are tamed here, never allowed to
        # make the commit fail (which would lose a rotated token).
        expires_in = payload.get("expires_in")
        lifetime = (
            min(float(expires_in), MAX_SESSION_SECONDS)
            if isinstance(expires_in, int | float)
            and not isinstance(expires_in, bool)
            and math.isfinite(expires_in)
            and expires_in > 0
            else self._settings.session_ttl_seconds
        )
        wid = payload.get("wid")
        wid_text = str(wid) if wid is not None else None
        return TokenSet(
            access_token=access,
            refresh_token=refresh,
            expires_at=now_utc() + timedelta(seconds=lifetime),
            # wid is undocumented: kept when it fits, never relied on.
            wid=wid_text if wid_text and len(wid_text) <= MAX_ID_CHARS else None,
        )

    # API ---------------------------------------------------------------------

    async def get_user(self, access_token: str) -> WorkfrontUser:
        """Learn which user a sessionID belongs to (GET /attask/api/<version>/session)."""
        response = await self._call(
            "GET",
            f"{self._api}/session",
            what="session lookup",
            headers={"sessionID": access_token},
        )
        status = response.status
        if status == 401:
            raise SessionRejectedError("session lookup answered 401", status=status)
        if status != 200:
            raise TransientError(f"session lookup answered {status}", status=status)
        try:
            payload = response.json()
        except ValueError:
            raise TransientError("session lookup answered a non-JSON body") from None
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, dict):
            # Workfront sometimes answers errors with HTTP 200 and {"error": ...}.
            raise SessionRejectedError("session lookup answered an error", status=status)
        user_id = data.get("userID")
        if not isinstance(user_id, str) or not 0 < len(user_id) <= MAX_USER_ID_CHARS:
            raise TransientError("session lookup answered no usable userID")
        customer = data.get("customerID")
        customer_id = str(customer) if customer else None
        if customer_id is not None and len(customer_id) > MAX_USER_ID_CHARS:
            customer_id = None
        return WorkfrontUser(user_id=user_id, customer_id=customer_id)

    async def logout(self, access_token: str) -> bool:
        """End a session; best effort (Workfront has no OAuth revoke endpoint)."""
        try:
            response = await self._call(
                "GET", f"{self._api}/logout", what="logout", headers={"sessionID": access_token}
            )
        except TransientError as exc:
            log.info("%s; the session will lapse by itself", exc.detail)
            return False
        return response.status == 200
