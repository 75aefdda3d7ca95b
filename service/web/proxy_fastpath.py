"""The proxy answered before FastAPI's routing, for callers already known.

Routing and dependency resolution cost more than the broker's own part of a
proxied call (docs/benchmarks.md). When the caller's key is known valid with
a proxy scope (service.hotcache) and the path is plainly
``/v1/connections/<id>/workfront/attask/api/...``, this ASGI middleware
answers through the same ``proxy_answer`` the route calls. Everything else
goes to the app unchanged; the route stays the documented one and decides.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

from service.logs import note_client, note_route
from service.web.known_callers import canonical_uuid, known_caller
from service.web.problems import ProblemError, problem_response, unexpected_error_response
from service.web.proxy_answers import (
    PROXY_MARKER,
    PROXY_METHODS,
    PROXY_PATH,
    PROXY_PREFIX,
    PROXY_SCOPES,
    proxy_answer,
)

if TYPE_CHECKING:
    from service.runtime import Runtime

_ID_LENGTH = 36  # the canonical form; anything else goes the long way
_REST_AT = len(PROXY_PREFIX) + _ID_LENGTH


class ProxyFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in PROXY_METHODS:
            path: str = scope["path"]
            if path.startswith(PROXY_PREFIX) and path.startswith(PROXY_MARKER, _REST_AT):
                known = _known_caller(scope, path[len(PROXY_PREFIX) : _REST_AT])
                if known is not None:
                    await _answer(scope, receive, send, *known)
                    return
        await self.app(scope, receive, send)


async def _answer(
    scope: Scope, receive: Receive, send: Send, runtime: Runtime, connection_id: uuid.UUID
) -> None:
    try:
        response = await proxy_answer(runtime, connection_id, scope, receive)
    except ProblemError as exc:
        # This middleware runs outside the app's exception handlers.
        problem = problem_response(
            exc.status, exc.slug, exc.detail, headers=exc.headers, extra=exc.extra
        )
        await problem(scope, receive, send)
        return
    except Exception as exc:  # what the route's caller would see
        await unexpected_error_response(exc)(scope, receive, send)
        return
    await response(scope, receive, send)


def _known_caller(scope: Scope, raw_id: str) -> tuple[Runtime, uuid.UUID] | None:
    """(runtime, connection id) for a plain request by a known caller with a
    proxy scope; else None (the route decides)."""
    known = known_caller(scope)
    if known is None:
        return None
    runtime, principal = known
    # A key limited in reach goes the long way: the route checks it.
    if principal.restricted or not any(principal.allows(s) for s in PROXY_SCOPES):
        return None
    connection_id = canonical_uuid(raw_id)
    if connection_id is None:
        return None
    note_client(principal.client_id)
    note_route(PROXY_PATH, raw_id)
    return runtime, connection_id
