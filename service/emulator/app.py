"""In-memory Adobe Workfront emulator (ASGI) for development, tests and benchmarks.

It speaks the upstream protocol the broker uses (authorize page, token
endpoint in both documented styles, /attask/api/<version>/session|logout|proj/search) and
adds control endpoints under /__emulator/ so tests can inject faults, change behaviour at
run time and inspect what a client did. Nothing is persisted: state lives on
``app.state.emulator`` and dies with the process.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import html
import json
import secrets
import time
import typing
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import Receive, Scope, Send

__all__ = [
    "ConnectionDropped",
    "EmulatorSettings",
    "EmulatorState",
    "create_emulator_app",
    "run_emulator",
]

AUTHORIZE_PATH = "/integrations/oauth2/authorize"
TOKEN_PATH = "/integrations/oauth2/api/v1/token"
_RAW_SEND = "workfront_emulator.raw_send"  # scope key: the server's own send callable
_NOT_LOGGED_IN = {
    "error": {
        "class": "com.attask.common.AuthenticationException",
        "message": "You are not currently logged in.",
    }
}
_COUNTERS = (
    "token_requests codes_issued code_exchanges refreshes_ok refresh_failures reuse_detected"
    " code_reuse faults_served"
).split()
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass
class EmulatorSettings:
    """Behaviour knobs; mutable at run time through PATCH /__emulator/settings."""

    client_id: str = "demo-client"
    client_secret: str = "demo-secret"
    redirect_uri: str | None = None  # when set, authorize + token calls must use exactly it
    domain: str = "emulator"  # echoed to the callback
    lane: str = "my"
    expires_in: int = 0  # value returned in token responses
    session_ttl_seconds: float = 1800.0  # how long an issued sessionID is accepted
    rotate_refresh_tokens: bool = True
    reuse_detection: bool = True
    omit_refresh_token: bool = False  # rotation off: omit refresh_token instead of repeating it
    latency_ms: float = 0.0  # added to every token-endpoint request
    code_ttl_seconds: float = 120.0
    hang_seconds: float = 30.0  # how long a "timeout" fault sleeps before answering


_SETTING_TYPES = typing.get_type_hints(EmulatorSettings)
# Reset restores behaviour but keeps the identity the client was configured against.
_KEPT_ON_RESET = {"client_id", "client_secret", "redirect_uri", "domain", "lane"}


class ConnectionDropped(Exception):
    """Raised by a "drop" fault when the server's socket cannot be reached (in-process use)."""


class _Invalid(ValueError):
    """Bad input to a control endpoint: answered 422 by the app's exception handler."""


@dataclass
class _User:
    user_id: str
    customer_id: str
    username: str


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    user_id: str
    challenge: str | None
    expires_at: float
    used: bool = False
    grant_id: str | None = None  # what this code issued, revoked if the code comes back


@dataclass
class _Grant:
    """One authorization; its id is the ``wid``. The refresh-token family hangs off it."""

    user_id: str
    client_id: str
    refresh_tokens: list[str] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)
    revoked: bool = False


@dataclass
class _RefreshToken:
    grant_id: str
    status: Literal["active", "rotated", "revoked"] = "active"


@dataclass
class _Session:
    user_id: str
    grant_id: str
    expires_at: float


class _Answer(NamedTuple):
    status: int
    body: dict[str, Any]
    outcome: str
    headers: dict[str, str] | None = None


def _error(status: int, error: str, description: str, outcome: str | None = None) -> _Answer:
    body = {"error": error, "error_description": description}
    return _Answer(status, body, outcome or error, _NO_STORE)


def _h32(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _parse_form(body: bytes) -> dict[str, str] | None:
    """Urlencoded body -> dict; None when undecodable or a field repeats (RFC 6749 §3.2)."""
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        return None
    out = dict(pairs)
    return out if len(out) == len(pairs) else None


def _with_query(url: str, params: Mapping[str, str]) -> str:
    """Append params to a URL that may already carry a query string."""
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


class EmulatorState:
    """All mutable emulator state. Handlers mutate it only between awaits (see ``lock``)."""

    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        # Token handling is synchronous once the body is read, so a single event loop makes it
        # atomic already; the lock documents the critical section and keeps it atomic should an
        # await ever be added inside it (e.g. simulated storage latency).
        self.lock = asyncio.Lock()
        self.reset()

    def reset(self) -> None:
        self.users: dict[str, _User] = {}
        self.codes: dict[str, _Code] = {}
        self.grants: dict[str, _Grant] = {}
        self.refresh_tokens: dict[str, _RefreshToken] = {}
        self.sessions: dict[str, _Session] = {}
        self.faults: deque[dict[str, Any]] = deque()
        self.requests: list[dict[str, Any]] = []
        self.counters: Counter[str] = Counter()

    # -- authorize -------------------------------------------------------------------------
    def authorize_error(self, p: Mapping[str, str]) -> str | None:
        """Why these authorize parameters are refused, or None. Never redirect on these."""
        s = self.settings
        redirect_uri = p.get("redirect_uri", "")
        url = urlsplit(redirect_uri)
        if p.get("client_id") != s.client_id:
            return "Unknown client_id."
        if not redirect_uri or url.scheme not in ("http", "https") or not url.netloc:
            return "redirect_uri is missing or not an absolute http(s) URL."
        if s.redirect_uri is not None and redirect_uri != s.redirect_uri:
            return "redirect_uri does not match the one registered for this app."
        if p.get("response_type") != "code":
            return "response_type must be 'code'."
        if p.get("code_challenge") and p.get("code_challenge_method") != "S256":
            return "Only code_challenge_method=S256 is supported."
        return None

    def issue_code(self, p: Mapping[str, str], username: str) -> str:
        user_id = _h32("user:" + username)
        customer_id = _h32("customer:" + self.settings.domain)
        self.users.setdefault(user_id, _User(user_id, customer_id, username))
        code = secrets.token_urlsafe(32)
        self.codes[code] = _Code(
            client_id=p["client_id"],
            redirect_uri=p["redirect_uri"],
            user_id=user_id,
            challenge=p.get("code_challenge") or None,
            expires_at=time.monotonic() + self.settings.code_ttl_seconds,
        )
        self.counters["codes_issued"] += 1
        return code

    # -- tokens ----------------------------------------------------------------------------
    def _new_session(self, grant_id: str) -> str:
        token = secrets.token_hex(16)  # Workfront sessionIDs are 32 hex characters
        grant = self.grants[grant_id]
        expires_at = time.monotonic() + self.settings.session_ttl_seconds
        self.sessions[token] = _Session(grant.user_id, grant_id, expires_at)
        grant.sessions.append(token)
        return token

    def _new_refresh_token(self, grant_id: str) -> str:
        token = secrets.token_urlsafe(32)
        self.refresh_tokens[token] = _RefreshToken(grant_id)
        self.grants[grant_id].refresh_tokens.append(token)
        return token

    def mint_grant(self, username: str) -> dict[str, str]:
        """A grant as a completed authorize + code exchange would make it (test seeding)."""
        user_id = _h32("user:" + username)
        customer_id = _h32("customer:" + self.settings.domain)
        self.users.setdefault(user_id, _User(user_id, customer_id, username))
        grant_id = secrets.token_hex(16)
        self.grants[grant_id] = _Grant(user_id=user_id, client_id=self.settings.client_id)
        return {
            "user_id": user_id,
            "customer_id": customer_id,
            "wid": grant_id,
            "access_token": self._new_session(grant_id),
            "refresh_token": self._new_refresh_token(grant_id),
        }

    def revoke_grant(self, grant_id: str) -> None:
        """Kill the whole family: every refresh token and sessionID the grant produced."""
        grant = self.grants[grant_id]
        grant.revoked = True
        for token in grant.refresh_tokens:
            self.refresh_tokens[token].status = "revoked"
        for session in grant.sessions:
            self.sessions.pop(session, None)

    def live_session(self, token: str | None) -> _Session | None:
        session = self.sessions.get(token or "")
        return session if session and session.expires_at > time.monotonic() else None

    def _success(self, grant_id: str, refresh_token: str | None) -> _Answer:
        body: dict[str, Any] = {
            "token_type": "sessionID",
            "access_token": self._new_session(grant_id),
        }
        if refresh_token is not None:
            body["refresh_token"] = refresh_token
        body |= {"expires_in": self.settings.expires_in, "wid": grant_id}
        return _Answer(200, body, "ok", _NO_STORE)

    def token_grant(self, p: Mapping[str, str], client_id: str) -> _Answer:
        grant_type = p.get("grant_type")
        if grant_type == "authorization_code":
            return self._exchange_code(p, client_id)
        if grant_type == "refresh_token":
            answer = self._refresh(p, client_id)
            self.counters["refreshes_ok" if answer.status == 200 else "refresh_failures"] += 1
            return answer
        if not grant_type:
            return _error(400, "invalid_request", "grant_type is required.")
        return _error(400, "unsupported_grant_type", f"Unsupported grant_type {grant_type!r}.")

    def _exchange_code(self, p: Mapping[str, str], client_id: str) -> _Answer:
        if not p.get("code"):
            return _error(400, "invalid_request", "code is required.")
        code = self.codes.get(p["code"])
        if code is None or code.client_id != client_id:
            return _error(400, "invalid_grant", "Unknown authorization code.")
        if code.used:
            # RFC 6749 §4.1.2: a code seen twice may be stolen; revoke what it issued.
            self.counters["code_reuse"] += 1
            if code.grant_id is not None:
                self.revoke_grant(code.grant_id)
            return _error(400, "invalid_grant", "Authorization code was already used.")
        code.used = True  # burnt by its first presentation, even one that fails below
        if code.expires_at <= time.monotonic():
            return _error(400, "invalid_grant", "Authorization code expired.")
        if p.get("redirect_uri") != code.redirect_uri:
            return _error(400, "invalid_grant", "redirect_uri does not match the authorize call.")
        verifier = p.get("code_verifier")
        if code.challenge is not None and (not verifier or _s256(verifier) != code.challenge):
            return _error(400, "invalid_grant", "PKCE verification failed.")
        if code.challenge is None and verifier:
            return _error(400, "invalid_grant", "code_verifier sent but no challenge was.")
        grant_id = secrets.token_hex(16)
        self.grants[grant_id] = _Grant(user_id=code.user_id, client_id=client_id)
        code.grant_id = grant_id
        self.counters["code_exchanges"] += 1
        return self._success(grant_id, self._new_refresh_token(grant_id))

    def _refresh(self, p: Mapping[str, str], client_id: str) -> _Answer:
        s = self.settings
        presented = p.get("refresh_token")
        if not presented:
            return _error(400, "invalid_request", "refresh_token is required.")
        record = self.refresh_tokens.get(presented)
        if record is None or self.grants[record.grant_id].client_id != client_id:
            return _error(400, "invalid_grant", "Unknown refresh token.")
        if record.status == "revoked":
            return _error(400, "invalid_grant", "Refresh token was revoked.")
        if record.status == "rotated":
            if s.reuse_detection:
                self.revoke_grant(record.grant_id)
                self.counters["reuse_detected"] += 1
                return _error(400, "invalid_grant", "Refresh token reused.", "reuse_detected")
            return _error(400, "invalid_grant", "Refresh token was rotated out.")
        if s.rotate_refresh_tokens:
            record.status = "rotated"
            return self._success(record.grant_id, self._new_refresh_token(record.grant_id))
        return self._success(record.grant_id, None if s.omit_refresh_token else presented)

    def stats(self) -> dict[str, int]:
        out = {key: self.counters[key] for key in _COUNTERS}
        now = time.monotonic()
        out["sessions_live"] = sum(1 for x in self.sessions.values() if x.expires_at > now)
        out["grants_live"] = sum(1 for g in self.grants.values() if not g.revoked)
        out["users"] = len(self.users)
        out["faults_queued"] = len(self.faults)
        return out


# -- helpers for the HTTP layer ----------------------------------------------------------------
_STYLE = (
    "body{font-family:system-ui,sans-serif;background:#2c2c2c;color:#222;margin:0}"
    "main{max-width:26rem;margin:4rem auto;background:#fff;border-radius:8px;padding:2rem}"
    "h1{font-size:1.25rem;margin-top:0}label{display:block;margin:.8rem 0}"
    "input{display:block;width:100%;padding:.5rem;margin-top:.3rem;box-sizing:border-box}"
    "button{padding:.6rem 1.2rem;margin:.8rem .5rem 0 0;border-radius:5px;border:0;"
    "font-weight:600;cursor:pointer}button[value=allow]{background:#1473e6;color:#fff}"
    ".hint{color:#666;font-size:.85rem}"
)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><main><h1>{html.escape(title)}</h1>{body}"
        "</main></body></html>"
    )
    return HTMLResponse(doc, status, headers={"Cache-Control": "no-store"})


# Authorize parameters the login form carries from the GET to the POST in hidden fields.
_CARRIED = "client_id redirect_uri response_type state code_challenge code_challenge_method".split()


def _login_form(p: Mapping[str, str], error: str | None = None, status: int = 200) -> HTMLResponse:
    hidden = "".join(
        f'<input type="hidden" name="{k}" value="{html.escape(p[k])}">' for k in _CARRIED if k in p
    )
    note = f"<p role='alert'>{html.escape(error)}</p>" if error else ""
    form = (
        f'{note}<form method="post" action="{AUTHORIZE_PATH}">{hidden}'
        '<label>Username <input name="username" autocomplete="username"></label>'
        '<label>Password <input name="password" type="password"></label>'
        '<button type="submit" name="decision" value="allow">Allow</button>'
        '<button type="submit" name="decision" value="deny">Deny</button></form>'
        "<p class='hint'>This is the project's Workfront emulator: any user name and "
        "password sign in.</p>"
    )
    return _page("Workfront emulator: sign in and allow access", form, status)


def _client_credentials(
    request: Request, p: Mapping[str, str], style: str
) -> tuple[str, str, bool]:
    """(client_id, client_secret, used_basic). Basic wins; body fields only in the form style,
    so a client that puts its secret in a JSON body is caught here rather than upstream."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        if style != "form":
            return "", "", False
        return p.get("client_id", ""), p.get("client_secret", ""), False
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return "", "", True
    client_id, _, secret = decoded.partition(":")
    return client_id, secret, True


async def _read_token_body(request: Request) -> tuple[dict[str, str] | None, str]:
    """(params or None when malformed, style). Style follows the body's content type."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if ctype == "application/x-www-form-urlencoded":
        return _parse_form(body), "form"
    if ctype != "application/json":
        return None, "unknown"
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        return None, "basic_json"
    return data, "basic_json"


async def _drop_connection(request: Request) -> Response:
    """Close the socket without answering. ASGI has no verb for that, so reach the uvicorn
    request cycle behind the server's ``send`` (captured by _EmulatorApp) and close its
    transport. Without a server socket (httpx.ASGITransport, or mounted in another app) raise
    ConnectionDropped instead, which the in-process client sees as an exception."""
    cycle = getattr(request.scope.get(_RAW_SEND), "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None or not callable(getattr(transport, "close", None)):
        raise ConnectionDropped("injected 'drop' fault")
    transport.close()
    # Wait until the server has noticed, so it neither writes our reply nor logs an error.
    for _ in range(100):
        if getattr(cycle, "disconnected", True):
            break
        await asyncio.sleep(0.001)
    return Response(status_code=500)  # discarded: the connection is gone


async def _hang(request: Request, seconds: float) -> None:
    """Sleep ``seconds``, but stop early if the client goes away (so shutdown is not held)."""

    async def until_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(until_disconnect(), seconds)


def _check_fault(raw: object) -> dict[str, Any]:
    if not isinstance(raw, dict) or raw.get("kind") not in (
        "status",
        "timeout",
        "drop",
        "lost_response",
    ):
        raise _Invalid("each fault needs kind 'status', 'timeout', 'drop' or 'lost_response'")
    status, retry_after = raw.get("status"), raw.get("retry_after")
    # 204/304 cannot carry the JSON error body, so they are refused rather than mangled.
    if raw["kind"] == "status" and (
        not isinstance(status, int) or not 200 <= status <= 599 or status in (204, 304)
    ):
        raise _Invalid("a status fault needs an integer status 200..599 (not 204/304)")
    if retry_after is not None and not isinstance(retry_after, int | str):
        raise _Invalid("retry_after must be an integer or a string")
    return dict(raw)


def _check_setting(name: str, value: object) -> object:
    hint = _SETTING_TYPES.get(name)
    bad = _Invalid(f"bad value for setting {name!r}: {value!r}")
    if hint is None:
        raise _Invalid(f"unknown setting {name!r}")
    if hint is bool or isinstance(value, bool):  # bool is an int: keep it out of numbers
        if hint is not bool or not isinstance(value, bool):
            raise bad
    elif hint in (int, float):
        if not isinstance(value, int | float) or value < 0 or (hint is int and value % 1):
            raise bad
        return float(value) if hint is float else int(value)
    elif hint is str and not (isinstance(value, str) and value):
        raise bad
    elif hint is not str and not (value is None or isinstance(value, str)):  # str | None
        raise bad
    return value


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.body() or b"{}")
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise _Invalid("body must be a JSON object")
    return data


class _EmulatorApp(FastAPI):
    # The token endpoint's handler, called without FastAPI's routing and
    # middleware: benchmarks run the emulator beside the broker on the same
    # cores, where that overhead (half the emulator's CPU per refresh) would be
    # counted as Workfront's latency and take CPU from the broker.
    token_endpoint: Callable[[Request], Awaitable[Response]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Remember the server's own send callable: the "drop" fault needs its transport.
        if scope["type"] == "http":
            scope[_RAW_SEND] = send
            if (
                self.token_endpoint is not None
                and scope["path"] == TOKEN_PATH
                and scope["method"] == "POST"
            ):
                response = await self.token_endpoint(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_emulator_app(settings: EmulatorSettings | None = None) -> FastAPI:
    """Build the emulator. State (``EmulatorState``) lives on ``app.state.emulator``."""
    app = _EmulatorApp(title="Workfront emulator", docs_url=None, redoc_url=None, openapi_url=None)
    state = EmulatorState(settings if settings is not None else EmulatorSettings())
    app.state.emulator = state

    @app.exception_handler(_Invalid)
    async def invalid(request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": str(exc)}, 422)

    @app.get(AUTHORIZE_PATH)
    async def authorize_page(request: Request) -> Response:
        params = dict(request.query_params)
        problem = state.authorize_error(params)
        if problem is not None:
            return _page("Authorization request refused", f"<p>{html.escape(problem)}</p>", 400)
        return _login_form(params)

    @app.post(AUTHORIZE_PATH)
    async def authorize_submit(request: Request) -> Response:
        form = _parse_form(await request.body()) or {}
        problem = state.authorize_error(form)
        if problem is not None:
            return _page("Authorization request refused", f"<p>{html.escape(problem)}</p>", 400)
        back: dict[str, str] = {}
        if form.get("decision") == "deny":  # the user may cancel without signing in
            back = {"error": "access_denied"}
        elif not form.get("username") or not form.get("password"):
            return _login_form(form, "Enter a username and a password.", 400)
        elif form.get("decision") == "allow":
            s = state.settings
            back = {"code": state.issue_code(form, form["username"])}
            back |= {"domain": s.domain, "lane": s.lane}
        else:
            return _login_form(form, "Choose Allow or Deny.", 400)
        if "state" in form:
            back["state"] = form["state"]
        return RedirectResponse(_with_query(form["redirect_uri"], back), status_code=302)

    @app.post(TOKEN_PATH)
    async def token(request: Request) -> Response:
        state.counters["token_requests"] += 1
        entry: dict[str, Any] = {"seq": len(state.requests) + 1, "at": time.time()}
        entry |= {"status": 0, "outcome": "pending"}  # stable shape while in flight
        state.requests.append(entry)  # appended on arrival: the log is in arrival order
        fault = state.faults.popleft() if state.faults else None  # FIFO by arrival, too
        params, style = await _read_token_body(request)
        client_id, secret, basic = _client_credentials(request, params or {}, style)
        s = state.settings
        client_ok = client_id == s.client_id and secrets.compare_digest(
            secret.encode(), s.client_secret.encode()
        )
        entry |= {"grant_type": (params or {}).get("grant_type"), "style": style}
        entry |= {"client_ok": client_ok, "code": (params or {}).get("code")}
        entry |= {"refresh_token": (params or {}).get("refresh_token")}
        if s.latency_ms > 0:
            await asyncio.sleep(s.latency_ms / 1000)
        if fault is not None and fault["kind"] == "lost_response":
            # The request is handled for real (a refresh rotates the token), then
            # the answer never arrives: the one window no client can close.
            state.counters["faults_served"] += 1
            state.counters["lost_responses"] += 1
            async with state.lock:
                answer = (
                    state.token_grant(params, client_id)
                    if params is not None and client_ok
                    else _error(401, "invalid_client", "Client authentication failed.")
                )
            entry |= {"status": 0, "outcome": f"lost:{answer.outcome}", "fault": "lost_response"}
            return await _drop_connection(request)
        if fault is not None:
            state.counters["faults_served"] += 1
            entry |= {"status": 0, "outcome": "fault", "fault": fault["kind"]}
            if fault["kind"] == "drop":
                return await _drop_connection(request)
            if fault["kind"] == "timeout":
                await _hang(request, s.hang_seconds)
                entry["status"] = 504
                return JSONResponse({"error": "timeout", "error_description": "injected"}, 504)
            status, retry_after = fault["status"], fault.get("retry_after")
            entry["status"] = status
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
            desc = f"injected status {status}"
            return JSONResponse({"error": "fault", "error_description": desc}, status, headers)
        async with state.lock:
            if params is None:
                answer = _error(400, "invalid_request", "Malformed token request body.")
            elif not client_ok:
                answer = _error(401, "invalid_client", "Client authentication failed.")
            else:
                answer = state.token_grant(params, client_id)
        headers = dict(answer.headers or {})
        if answer.status == 401 and basic:
            headers["WWW-Authenticate"] = 'Basic realm="workfront"'
        entry |= {"status": answer.status, "outcome": answer.outcome}
        return JSONResponse(answer.body, answer.status, headers)

    app.token_endpoint = token

    @app.get("/attask/api/{version}/session")
    async def session_info(request: Request, version: str) -> Response:
        session = state.live_session(request.headers.get("sessionID"))
        if session is None:
            return JSONResponse(_NOT_LOGGED_IN, 401)
        user = state.users[session.user_id]
        data = {"userID": user.user_id, "customerID": user.customer_id, "userName": user.username}
        return JSONResponse({"data": data})

    @app.get("/attask/api/{version}/logout")
    async def logout(request: Request, version: str) -> Response:
        token = request.headers.get("sessionID")
        if state.live_session(token) is None:
            return JSONResponse(_NOT_LOGGED_IN, 401)
        del state.sessions[token or ""]
        return JSONResponse({"data": {"success": True}})

    @app.get("/attask/api/{version}/proj/search")
    async def proj_search(request: Request, version: str) -> Response:
        session = state.live_session(request.headers.get("sessionID"))
        if session is None:
            return JSONResponse(_NOT_LOGGED_IN, 401)
        customer = state.users[session.user_id].customer_id
        names = ("Website relaunch", "Q3 campaign", "Data migration")
        data = [
            {"ID": _h32(f"proj:{customer}:{n}"), "name": n, "objCode": "PROJ", "status": "CUR"}
            for n in names
        ]
        return JSONResponse({"data": data})

    # -- control endpoints (tests and benchmarks only) ------------------------------------
    @app.get("/__emulator/settings")
    async def get_settings() -> Response:
        return JSONResponse(dataclasses.asdict(state.settings))

    @app.patch("/__emulator/settings")
    async def patch_settings(request: Request) -> Response:
        data = await _json_object(request)
        # Validate everything first so a bad field changes nothing.
        checked = {name: _check_setting(name, value) for name, value in data.items()}
        for name, value in checked.items():
            setattr(state.settings, name, value)
        return JSONResponse(dataclasses.asdict(state.settings))

    @app.post("/__emulator/faults")
    async def add_faults(request: Request) -> Response:
        data = await _json_object(request)
        if not isinstance(data.get("faults"), list):
            raise _Invalid("body must be {'faults': [...]}")
        state.faults.extend([_check_fault(raw) for raw in data["faults"]])
        return JSONResponse({"queued": len(state.faults)})

    @app.delete("/__emulator/faults")
    async def clear_faults() -> Response:
        cleared = len(state.faults)
        state.faults.clear()
        return JSONResponse({"cleared": cleared})

    @app.get("/__emulator/requests")
    async def get_requests() -> Response:
        return JSONResponse({"requests": state.requests})

    @app.get("/__emulator/stats")
    async def get_stats() -> Response:
        return JSONResponse(state.stats())

    @app.post("/__emulator/reset")
    async def reset() -> Response:
        state.reset()
        defaults = EmulatorSettings()
        for f in dataclasses.fields(EmulatorSettings):
            if f.name not in _KEPT_ON_RESET:
                setattr(state.settings, f.name, getattr(defaults, f.name))
        return JSONResponse({"reset": True})

    @app.post("/__emulator/revoke")
    async def revoke_user(request: Request) -> Response:
        user_id = (await _json_object(request)).get("user_id")
        if not isinstance(user_id, str):
            raise _Invalid("body must be {'user_id': '...'}")
        grant_ids = [gid for gid, g in state.grants.items() if g.user_id == user_id]
        for gid in grant_ids:
            state.revoke_grant(gid)
        return JSONResponse({"revoked_grants": len(grant_ids)})

    @app.post("/__emulator/grants")
    async def mint_grants(request: Request) -> Response:
        # Seeds many connected users at once for load tests, skipping the
        # browser round trips; the grants behave exactly like exchanged ones.
        body = await _json_object(request)
        usernames = body.get("usernames")
        if not isinstance(usernames, list) or not all(
            isinstance(name, str) and name for name in usernames
        ):
            raise _Invalid("usernames must be a list of non-empty strings")
        async with state.lock:
            grants = [state.mint_grant(name) for name in usernames]
        return JSONResponse({"grants": grants})

    @app.post("/__emulator/expire-sessions")
    async def expire_sessions() -> Response:
        now = time.monotonic()
        live = [x for x in state.sessions.values() if x.expires_at > now]
        for session in live:
            session.expires_at = now
        return JSONResponse({"expired": len(live)})

    @app.get("/__emulator/refresh-token-reuse")
    async def refresh_token_reuse() -> Response:
        # Faulted requests never reached the grant logic, so retrying one with the same
        # token is safe and is not counted. Counter keeps first-seen order.
        seen = Counter(
            e["refresh_token"]
            for e in state.requests
            if e.get("refresh_token") and e.get("outcome") != "fault"
        )
        return JSONResponse({"presented_twice": [t for t, n in seen.items() if n > 1]})

    return app


async def run_emulator(*, host: str, port: int, settings: EmulatorSettings | None = None) -> None:
    """Serve the emulator with uvicorn until the server exits or this task is cancelled."""
    config = uvicorn.Config(
        create_emulator_app(settings),
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    try:
        await server.serve()
    except asyncio.CancelledError:
        # Cancelling is how callers stop us: close the listening socket and connections
        # instead of leaking them, then let the cancellation propagate.
        if server.started:
            server.should_exit = True
            await server.shutdown()
        raise
