"""The Workfront client: the only code that talks to the instance.

Every call goes to the configured instance (never to a host taken from a
callback). Failures become typed errors so callers can tell a transient
failure (keep the tokens, try again later) from a revoked grant (the user must
authorize again; never present that refresh token again).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx

from service.config import Settings
from service.metrics import UPSTREAM_LATENCY

log = logging.getLogger(__name__)

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


def _names_invalid_client(response: httpx.Response) -> bool:
    """Whether an error answer says ``{"error": "invalid_client"}`` (RFC 6749 §5.2)."""
    try:
        payload = response.json()
    except ValueError:
        return False
    return isinstance(payload, dict) and payload.get("error") == "invalid_client"


def pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


# Refreshes in flight per HTTP client. httpcore's pool scans every pooled
# connection (and some pairs of them) on each request's start and end, so one
# client's cost per request grows with its connection count; refreshes run in
# parallel (refresher concurrency, up to half the database pool) are spread
# over several clients of about this many connections each.
REFRESHES_PER_CLIENT = 8


def refresh_lanes(settings: Settings) -> int:
    """How many HTTP clients refreshes are spread over (see REFRESHES_PER_CLIENT)."""
    parallel = max(settings.refresher_concurrency, settings.db_pool_size // 2)
    return max(1, -(-parallel // REFRESHES_PER_CLIENT))


class WorkfrontClient:
    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        *,
        refresh_clients: list[httpx.AsyncClient] | None = None,
    ) -> None:
        self._settings = settings
        self._http = http
        self._lanes = refresh_clients or [http]
        self._next_lane = itertools.cycle(range(len(self._lanes)))
        self._base = settings.workfront_url
        self._api = f"{self._base}/attask/api/{settings.workfront_api_version}"

    @staticmethod
    def make_http_client(settings: Settings) -> httpx.AsyncClient:
        timeout = settings.upstream_timeout_seconds
        return httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            # Keep a connection alive for every refresh the refresher runs at
            # once: beyond the keep-alive limit each refresh would open and
            # close its own TCP (and in production TLS) connection.
            limits=httpx.Limits(
                max_connections=max(100, settings.refresher_concurrency + 16),
                max_keepalive_connections=max(20, settings.refresher_concurrency + 8),
            ),
            follow_redirects=False,
            headers={"User-Agent": "workfront-token-broker/0.1"},
        )

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
            fields,
            secret=refresh_token,
            previous_refresh_token=refresh_token,
            http=self._lanes[next(self._next_lane)],
        )

    async def _token_request(
        self,
        fields: dict[str, str],
        *,
        secret: str,
        previous_refresh_token: str | None,
        http: httpx.AsyncClient | None = None,
    ) -> TokenSet:
        http = http or self._http
        client_secret = self._settings.client_secret.get_secret_value()
        url = f"{self._base}{TOKEN_PATH}"
        started = time.monotonic()
        try:
            if self._settings.token_auth == "basic_json":
                response = await http.post(
                    url, json=fields, auth=(self._settings.client_id, client_secret)
                )
            else:
                form = {
                    **fields,
                    "client_id": self._settings.client_id,
                    "client_secret": client_secret,
                }
                response = await http.post(url, data=form)
        except httpx.TimeoutException:
            raise TransientError("token endpoint timed out") from None
        except httpx.HTTPError as exc:
            raise TransientError(f"token endpoint unreachable ({type(exc).__name__})") from None
        finally:
            UPSTREAM_LATENCY.labels(call="token").observe(time.monotonic() - started)

        status = response.status_code
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
            expires_at=datetime.now(UTC) + timedelta(seconds=lifetime),
            # wid is undocumented: kept when it fits, never relied on.
            wid=wid_text if wid_text and len(wid_text) <= MAX_ID_CHARS else None,
        )

    # API ---------------------------------------------------------------------

    async def get_user(self, access_token: str) -> WorkfrontUser:
        """Learn which user a sessionID belongs to (GET /attask/api/<version>/session)."""
        try:
            response = await self._http.get(
                f"{self._api}/session", headers={"sessionID": access_token}
            )
        except httpx.TimeoutException:
            raise TransientError("session lookup timed out") from None
        except httpx.HTTPError as exc:
            raise TransientError(f"session lookup failed ({type(exc).__name__})") from None
        status = response.status_code
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
            response = await self._http.get(
                f"{self._api}/logout", headers={"sessionID": access_token}
            )
        except httpx.HTTPError as exc:
            log.info(
                "logout call failed (%s); the session will lapse by itself", type(exc).__name__
            )
            return False
        return response.status_code == 200
