"""Access log as plain ASGI middleware, and the request id every log line carries.

What is logged of a request is its method, its route (the path *template*,
e.g. ``/connect/{token}``, so a one-time connect link never reaches a log;
a path no route matched, such as ``/connect/<token>/``, only as its first
segment), status and duration: never the query string (``/oauth/callback`` carries the
authorization code and state) and never a header (``Authorization`` carries the
API key). uvicorn's own access log prints query strings, so it is off.

Plain ASGI rather than Starlette's BaseHTTPMiddleware, which costs a task and a
stream per request on the hot token path.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logs import REQUEST_CONTEXT
from service.web.problems import problem_response

log = logging.getLogger("service.access")

REQUEST_ID_HEADER = b"x-request-id"
# A caller's own request id is kept only when it is short and plain, so it
# cannot forge log structure or smuggle a secret into every line.
_ACCEPTABLE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            if _ACCEPTABLE_ID.match(value):
                return bytes(value).decode("ascii")
            break
    return secrets.token_hex(8)


def logged_path(scope: Scope) -> str:
    """The matched route's template; for a path no route matched, its first
    segment if a route starts with it, the rest elided. Never the raw path: it
    may carry a secret (a connect-link token with a trailing slash, say)."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if isinstance(template, str):
        return template
    path: str = scope["path"]
    first, _, rest = path.removeprefix("/").partition("/")
    if first not in _route_prefixes(scope.get("app")):
        return "/…"
    return f"/{first}/…" if rest or path.endswith("/") else f"/{first}"


def _route_prefixes(app: Any) -> frozenset[str]:
    """The first path segments the app serves (``v1``, ``connect``, ``static``…):
    its documented paths (the OpenAPI document, built once) and its mounts."""
    state = getattr(app, "state", None)
    known: frozenset[str] | None = getattr(state, "route_prefixes", None)
    if known is not None:
        return known
    paths: list[str] = []
    if hasattr(app, "openapi"):
        paths.extend(app.openapi()["paths"])
    paths.extend(
        p
        for route in getattr(app, "routes", ())
        if isinstance(p := getattr(route, "path", None), str)
    )
    known = frozenset(
        first
        for path in paths
        if (first := path.removeprefix("/").partition("/")[0]) and not first.startswith("{")
    )
    if state is not None:
        state.route_prefixes = known
    return known


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        context: dict[str, Any] = {"scope": scope, "request_id": request_id}
        token = REQUEST_CONTEXT.set(context)
        status = 500  # what uvicorn answers if the app fails before it starts answering
        answered = False
        header = (REQUEST_ID_HEADER, request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            # uvicorn cancels requests still running when the graceful shutdown
            # time is up, and would answer them 500. Tell the caller what it is:
            # this replica is going away, try again (another one).
            if not answered:
                shutting_down = problem_response(
                    503,
                    "shutting-down",
                    "this broker instance is shutting down; retry the request",
                    headers={"Retry-After": "1"},
                )
                await shutting_down(scope, receive, send_with_id)
            raise
        finally:
            if log.isEnabledFor(logging.INFO):
                duration_ms = round((time.perf_counter() - started) * 1000, 2)
                method, path = scope["method"], context.get("route") or logged_path(scope)
                log.info(
                    "%s %s %d %.1fms",
                    method,
                    path,
                    status,
                    duration_ms,
                    extra={
                        "method": method,
                        "path": path,
                        "status": status,
                        "duration_ms": duration_ms,
                    },
                )
            REQUEST_CONTEXT.reset(token)
