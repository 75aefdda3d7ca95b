"""The emulator's ASGI app: Workfront's OAuth2 and API routes, and ``run_emulator``.

It speaks the upstream protocol the broker uses (authorize page, token
endpoint in both documented styles, /attask/api/<version>/session|logout and the
object API of ``service.emulator.objects``),
at the paths of ``service.workfront.protocol``, and mounts the control endpoints
under /__emulator/ (``service.emulator.control``) so tests can inject faults,
change behaviour at run time and inspect what a client did. State
(``EmulatorState``) lives on ``app.state.emulator`` and dies with the process.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.types import Receive, Scope, Send

from service.emulator.control import add_control_routes
from service.emulator.faults import RAW_SEND, delay, drop_connection, serve_fault
from service.emulator.objects import add_object_routes, api_gate
from service.emulator.pages import login_form, refused
from service.emulator.settings import EmulatorSettings
from service.emulator.state import EmulatorState, oauth_error
from service.workfront.protocol import (
    API_ROOT,
    AUTHORIZE_PATH,
    LOGOUT_PATH,
    SESSION_PATH,
    TOKEN_PATH,
)


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


class _EmulatorApp(FastAPI):
    # The token endpoint's handler, called without FastAPI's routing and
    # middleware: benchmarks run the emulator beside the broker on the same
    # cores, where that overhead (half the emulator's CPU per refresh) would be
    # counted as Workfront's latency and take CPU from the broker.
    token_endpoint: Callable[[Request], Awaitable[Response]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Remember the server's own send callable: the "drop" fault needs its transport.
        if scope["type"] == "http":
            scope[RAW_SEND] = send
            if (
                self.token_endpoint is not None
                and scope["path"] == TOKEN_PATH
                and scope["method"] == "POST"
            ):
                response = await self.token_endpoint(Request(scope, receive, send))
                await response(scope, receive, send)
                return
            if scope["path"].startswith(API_ROOT):
                await self._api_call(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _api_call(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An API call: its latency (``api_latency_ms``), and how many are in
        flight at once (the most, for tests of the broker's proxy gate)."""
        state: EmulatorState = self.state.emulator
        state.api_in_flight += 1
        state.api_in_flight_most = max(state.api_in_flight_most, state.api_in_flight)
        try:
            if state.settings.api_latency_ms > 0:
                await asyncio.sleep(state.settings.api_latency_ms / 1000)
            await super().__call__(scope, receive, send)
        finally:
            state.api_in_flight -= 1


def create_emulator_app(settings: EmulatorSettings | None = None) -> FastAPI:
    """Build the emulator. State (``EmulatorState``) lives on ``app.state.emulator``."""
    app = _EmulatorApp(title="Workfront emulator", docs_url=None, redoc_url=None, openapi_url=None)
    state = EmulatorState(settings if settings is not None else EmulatorSettings())
    app.state.emulator = state

    @app.get(AUTHORIZE_PATH)
    async def authorize_page(request: Request) -> Response:
        params = dict(request.query_params)
        problem = state.authorize_error(params)
        if problem is not None:
            return refused(problem)
        return login_form(params)

    @app.post(AUTHORIZE_PATH)
    async def authorize_submit(request: Request) -> Response:
        form = _parse_form(await request.body()) or {}
        problem = state.authorize_error(form)
        if problem is not None:
            return refused(problem)
        back: dict[str, str] = {}
        if form.get("decision") == "deny":  # the user may cancel without signing in
            back = {"error": "access_denied"}
        elif not form.get("username") or not form.get("password"):
            return login_form(form, "Enter a username and a password.", 400)
        elif form.get("decision") == "allow":
            s = state.settings
            back = {"code": state.issue_code(form, form["username"])}
            back |= {"domain": s.domain, "lane": s.lane}
        else:
            return login_form(form, "Choose Allow or Deny.", 400)
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
        entry |= {"client_id": client_id, "client_ok": client_ok}
        entry |= {"code": (params or {}).get("code")}
        entry |= {"refresh_token": (params or {}).get("refresh_token")}
        await delay(s)
        if fault is not None:
            state.counters["faults_served"] += 1
            if fault["kind"] != "lost_response":
                return await serve_fault(fault, request, entry, hang_seconds=s.hang_seconds)
            # The request is handled for real (a refresh rotates the token), then
            # the answer never arrives: the one window no client can close.
            state.counters["lost_responses"] += 1
            async with state.lock:
                answer = (
                    state.token_grant(params, client_id)
                    if params is not None and client_ok
                    else oauth_error(401, "invalid_client", "Client authentication failed.")
                )
            entry |= {"status": 0, "outcome": f"lost:{answer.outcome}", "fault": "lost_response"}
            return await drop_connection(request)
        async with state.lock:
            if params is None:
                answer = oauth_error(400, "invalid_request", "Malformed token request body.")
            elif not client_ok:
                answer = oauth_error(401, "invalid_client", "Client authentication failed.")
            else:
                answer = state.token_grant(params, client_id)
        headers = dict(answer.headers or {})
        if answer.status == 401 and basic:
            headers["WWW-Authenticate"] = 'Basic realm="workfront"'
        entry |= {"status": answer.status, "outcome": answer.outcome}
        return JSONResponse(answer.body, answer.status, headers)

    app.token_endpoint = token

    @app.get(SESSION_PATH)
    async def session_info(request: Request, version: str) -> Response:
        session = api_gate(state, request)
        if isinstance(session, Response):
            return session
        user = state.users[session.user_id]
        data = {"userID": user.user_id, "customerID": user.customer_id, "userName": user.username}
        return JSONResponse({"data": data})

    @app.get(LOGOUT_PATH)
    async def logout(request: Request, version: str) -> Response:
        session = api_gate(state, request)
        if isinstance(session, Response):
            return session
        del state.sessions[request.headers.get("sessionID", "")]
        return JSONResponse({"data": {"success": True}})

    add_object_routes(app, state)
    add_control_routes(app, state)

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
