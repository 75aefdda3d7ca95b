"""The Workfront client: the only code that talks to the instance.

Every call goes to the configured instance (never to a host taken from a
callback). Failures become typed errors (``service.workfront.errors``) so
callers can tell a transient failure (keep the tokens, try again later) from a
revoked grant (the user must authorize again; never present that refresh token
again).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp

from service.clock import now_utc
from service.config import Settings
from service.instances import Instance
from service.metrics import UPSTREAM_LATENCY
from service.workfront.errors import (
    ClientCredentialsRejected,
    SessionRejectedError,
    TransientError,
    session_lookup_error,
    token_endpoint_error,
)
from service.workfront.http import _proxy_for, open_session
from service.workfront.protocol import (
    AUTHORIZE_PATH,
    LOGOUT_PATH,
    MAX_ID_CHARS,
    MAX_SESSION_SECONDS,
    MAX_USER_ID_CHARS,
    SESSION_PATH,
    TOKEN_PATH,
)

log = logging.getLogger("service.workfront")  # pinned: operators filter on it


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


@dataclass(frozen=True, slots=True)
class _Answer:
    """An upstream answer, read whole while its connection was held."""

    status: int
    headers: Mapping[str, str]
    body: bytes = field(repr=False)

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not (the stdlib parser: it
        accepts what Workfront might send, NaN included, that stricter ones refuse)."""
        return json.loads(self.body)


class WorkfrontClient:
    """Calls to one instance, with that instance's app credentials only, over
    the broker's aiohttp session (``service.workfront.http``)."""

    def __init__(self, settings: Settings, instance: Instance, http: aiohttp.ClientSession) -> None:
        self._settings = settings
        self.instance = instance
        self._http = http
        self._base = instance.workfront_url
        version = instance.api_version
        self._session_url = f"{self._base}{SESSION_PATH.format(version=version)}"
        self._logout_url = f"{self._base}{LOGOUT_PATH.format(version=version)}"
        self._token_url = f"{self._base}{TOKEN_PATH}"
        self._proxy = _proxy_for(self._base)
        self._token_latency = UPSTREAM_LATENCY.labels(call="token", instance=instance.name)
        secret = instance.client_secret.get_secret_value()
        basic = base64.b64encode(f"{instance.client_id}:{secret}".encode()).decode()
        # Built once: per-request auth objects cost more than the request.
        self._basic_auth = {"Authorization": f"Basic {basic}"}
        # A refresh waits longer for its answer than other calls (see
        # Settings.refresh_timeout_seconds); connecting is bounded as for any call.
        upstream = settings.upstream_timeout_seconds
        self._refresh_timeout = aiohttp.ClientTimeout(
            total=settings.refresh_call_ceiling_seconds,
            connect=upstream,
            sock_connect=min(upstream, 5.0),
            sock_read=max(upstream, settings.refresh_timeout_seconds),
        )

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
            "client_id": self.instance.client_id,
            "redirect_uri": self.instance.redirect_uri,
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
            "redirect_uri": self.instance.redirect_uri,
        }
        if code_verifier is not None:
            fields["code_verifier"] = code_verifier
        return await self._token_request(fields, secret=code, previous_refresh_token=None)

    async def refresh(self, refresh_token: str) -> TokenSet:
        fields = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if self.instance.token_auth == "form":
            # The documented form-style refresh carries redirect_uri too.
            fields["redirect_uri"] = self.instance.redirect_uri
        return await self._token_request(
            fields,
            secret=refresh_token,
            previous_refresh_token=refresh_token,
            call_timeout=self._refresh_timeout,
        )

    async def _token_request(
        self,
        fields: dict[str, str],
        *,
        secret: str,
        previous_refresh_token: str | None,
        call_timeout: aiohttp.ClientTimeout | None = None,
    ) -> TokenSet:
        client_secret = self.instance.client_secret.get_secret_value()
        per_call: dict[str, Any] = {} if call_timeout is None else {"timeout": call_timeout}
        started = time.monotonic()
        try:
            if self.instance.token_auth == "basic_json":
                response = await self._call(
                    "POST",
                    self._token_url,
                    what="token endpoint",
                    data=json.dumps(fields).encode(),
                    headers={**self._basic_auth, "Content-Type": "application/json"},
                    **per_call,
                )
            else:
                form = {
                    **fields,
                    "client_id": self.instance.client_id,
                    "client_secret": client_secret,
                }
                response = await self._call(
                    "POST", self._token_url, what="token endpoint", data=form, **per_call
                )
        finally:
            self._token_latency.observe(time.monotonic() - started)

        error = token_endpoint_error(
            response.status, response.headers, response.body, secrets=(secret, client_secret)
        )
        if error is not None:
            if isinstance(error, ClientCredentialsRejected):
                # Marking every connection needs_reauth over a mistyped secret
                # would make every user connect again: say so to the operator.
                log.error(
                    "Workfront refused the app's client credentials of instance %r: check"
                    " its client id and secret (BROKER_CLIENT_ID and BROKER_CLIENT_SECRET"
                    " for 'default')",
                    self.instance.name,
                )
            raise error
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
            self._session_url,
            what="session lookup",
            headers={"sessionID": access_token},
        )
        status = response.status
        error = session_lookup_error(status)
        if error is not None:
            raise error
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
                "GET", self._logout_url, what="logout", headers={"sessionID": access_token}
            )
        except TransientError as exc:
            log.info("%s; the session will lapse by itself", exc.detail)
            return False
        return response.status == 200


class Workfronts:
    """One client per configured instance, sharing the broker's HTTP session."""

    def __init__(self, settings: Settings, http: aiohttp.ClientSession) -> None:
        self._clients = {
            name: WorkfrontClient(settings, instance, http)
            for name, instance in settings.instances.items()
        }

    def __getitem__(self, instance: str) -> WorkfrontClient:
        return self._clients[instance]

    def __contains__(self, instance: object) -> bool:
        return instance in self._clients

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[Workfronts]:
        async with open_session(settings) as http:
            yield cls(settings, http)
