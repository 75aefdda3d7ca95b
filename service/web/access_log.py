"""Access log as plain ASGI middleware, and the request id every log line carries.

What is logged of a request is its method, its route (the path *template*,
e.g. ``/connect/{token}``, so a one-time connect link never reaches a log),
status and duration: never the query string (``/oauth/callback`` carries the
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
_MAX_LOGGED_PATH = 120


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            if _ACCEPTABLE_ID.match(value):
                return bytes(value).decode("ascii")
            break
    return secrets.token_hex(8)


def logged_path(scope: Scope) -> str:
    """The matched route's template, else the raw path (cut short): no parameters."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if isinstance(template, str):
        return template
    path: str = scope["path"]
    return path if len(path) <= _MAX_LOGGED_PATH else path[:_MAX_LOGGED_PATH] + "…"


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
