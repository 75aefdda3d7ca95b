"""The token read answered before FastAPI's routing, for callers already known.

``GET /v1/connections/{id}/token`` is what internal services call before
their Workfront calls. Routing, dependency resolution and parameter validation
cost several times a read answered from memory. When the caller's key is
known valid with the ``tokens:read`` scope (service.hotcache) and the request
is plainly well formed, this ASGI middleware answers it itself: straight from
memory when the session is there with ``min_ttl`` left, else through the same
``issue`` function the route calls (reading, refreshing, problem answers).
Everything else, including any request it is not sure about, goes to the app
unchanged; the route stays the documented one (OpenAPI) and decides those.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

from service.logs import note_client, note_route
from service.metrics import TOKEN_REQUESTS
from service.web.known_callers import canonical_uuid, known_caller
from service.web.problems import ProblemError, problem_response, unexpected_error_response
from service.web.schemas import token_json
from service.web.token_answers import (
    MIN_TTL_DEFAULT,
    MIN_TTL_MAX,
    TOKEN_PATH,
    TOKENS_SCOPE,
    etag,
    issue_token,
)

if TYPE_CHECKING:
    from service.runtime import Runtime

# The route's path around its one parameter.
_PREFIX, _SUFFIX = TOKEN_PATH.split("{connection_id}")
_ID_LENGTH = 36  # the canonical form; anything else goes the long way
_QUERY = re.compile(rb"min_ttl=(\d{1,5})")
_OK = TOKEN_REQUESTS.labels(kind="token", outcome="ok")


class TokenFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            if (
                len(path) == len(_PREFIX) + _ID_LENGTH + len(_SUFFIX)
                and path.startswith(_PREFIX)
                and path.endswith(_SUFFIX)
            ):
                known = self._known_caller(scope, path[len(_PREFIX) : -len(_SUFFIX)])
                if known is not None:
                    await self._answer(scope, receive, send, *known)
                    return
        await self.app(scope, receive, send)

    @staticmethod
    async def _answer(
        scope: Scope,
        receive: Receive,
        send: Send,
        runtime: Runtime,
        connection_id: uuid.UUID,
        min_ttl: int,
    ) -> None:
        issued = runtime.tokens.cached_token(connection_id, min_ttl)
        if issued is not None:
            _OK.inc()
        else:
            # Not in memory (or too little left): the route's own logic, shared
            # reads and refreshes included, and the app's answers to its errors
            # (this middleware runs outside the app's exception handlers).
            try:
                issued = await issue_token(runtime, connection_id, min_ttl=min_ttl)
            except ProblemError as exc:
                problem = problem_response(
                    exc.status, exc.slug, exc.detail, headers=exc.headers, extra=exc.extra
                )
                await problem(scope, receive, send)
                return
            except Exception as exc:  # what the route's caller would see, e.g. 503
                await unexpected_error_response(exc)(scope, receive, send)
                return
        body = token_json(issued, runtime.settings.instances)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(body)).encode()),
                    (b"content-type", b"application/json"),
                    (b"etag", etag(issued)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _known_caller(scope: Scope, raw_id: str) -> tuple[Runtime, uuid.UUID, int] | None:
        """(runtime, connection id, min_ttl) when this is a plain request by a known
        caller with the scope; else None (the route decides)."""
        query: bytes = scope["query_string"]
        if not query:
            min_ttl = MIN_TTL_DEFAULT
        else:
            match = _QUERY.fullmatch(query)
            if match is None:
                return None
            min_ttl = int(match[1])
            if min_ttl > MIN_TTL_MAX:
                return None
        known = known_caller(scope)
        if known is None:
            return None
        runtime, principal = known
        # A key limited in reach goes the long way: the route checks it.
        if not principal.allows(TOKENS_SCOPE) or principal.restricted:
            return None
        connection_id = canonical_uuid(raw_id)
        if connection_id is None:
            return None
        # The log context the route's dependencies would have set.
        note_client(principal.client_id)
        note_route(TOKEN_PATH, raw_id)
        return runtime, connection_id, min_ttl
