"""The proxy's answers, shared by its route (service.web.routes.proxy) and its
fast path (service.web.proxy_fastpath) so both answer exactly alike: the
path check, the session, the relayed call, the problems, the metrics."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.apikeys.authenticator import Principal
from service.apikeys.keys import Scope as KeyScope
from service.metrics import PROXY_REQUESTS, child
from service.proxy.gate import GateClosed
from service.proxy.paths import upstream_rest
from service.proxy.relay import ProxyRequest, Relayed, UpstreamFailed
from service.web.problems import ProblemError
from service.web.token_answers import MIN_TTL_DEFAULT, reach_of, session_problems

if TYPE_CHECKING:
    from service.runtime import Runtime

PROXY_PATH: Final = "/v1/connections/{connection_id}/workfront/attask/api/{rest:path}"
PROXY_PREFIX: Final = "/v1/connections/"
PROXY_MARKER: Final = "/workfront/attask/api/"
PROXY_METHODS: Final = ("GET", "POST", "PUT", "DELETE")
PROXY_SCOPES: Final[tuple[KeyScope, ...]] = ("workfront:proxy", "tokens:read")


def raw_rest(scope: Scope) -> str | None:
    """What follows ``/workfront/attask/api/`` in the path as the caller sent it."""
    raw = scope.get("raw_path")
    if not isinstance(raw, bytes):
        return None
    path = raw.decode("latin-1")
    head, marker, rest = path.partition(PROXY_MARKER)
    # The route matched the decoded path; the raw one must say the same, plainly.
    if not marker or not head.startswith(PROXY_PREFIX) or "%" in head:
        return None
    return rest


class RelayedResponse(Response):
    """Workfront's answer to the caller: in one message when it was read whole
    already (a small JSON answer: the session check read it), else streamed.
    The upstream connection and the gate's turn are given back however the
    sending ends."""

    def __init__(self, relayed: Relayed) -> None:  # no body of its own
        self._relayed = relayed
        self.status_code = relayed.status
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relayed = self._relayed
        try:
            if relayed.complete:
                length = (b"content-length", str(len(relayed.first)).encode())
                await send(
                    {
                        "type": "http.response.start",
                        "status": relayed.status,
                        "headers": [*relayed.headers, length],
                    }
                )
                await send({"type": "http.response.body", "body": relayed.first})
                return
            start = {"type": "http.response.start", "status": relayed.status}
            await send({**start, "headers": relayed.headers})
            async for chunk in relayed.chunks():
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            relayed.close()


def _body(scope: Scope, receive: Receive) -> AsyncIterator[bytes]:
    return Request(scope, receive).stream()


async def proxy_answer(
    runtime: Runtime,
    connection_id: uuid.UUID,
    scope: Scope,
    receive: Receive,
    caller: Principal | None = None,
) -> Response:
    """Workfront's answer to the proxied request; a ProblemError for the rest.
    The caller's key and scope were checked already; its reach is checked here
    (None: a caller known to reach every connection)."""
    method = scope["method"] if scope["method"] in PROXY_METHODS else "GET"
    status = 500  # counted as the answer's class, the broker's own refusals included
    instance = ""  # until the connection is known
    try:
        raw = raw_rest(scope)
        checked = upstream_rest(raw) if raw is not None else None
        if checked is None:
            raise ProblemError(404, "not-found", "no such Workfront API path")
        with session_problems():
            session = await runtime.tokens.get_token(
                connection_id, min_ttl=MIN_TTL_DEFAULT, reach=reach_of(caller)
            )
            instance = session.instance
            relayed = await runtime.relay.call(
                ProxyRequest(
                    connection_id=connection_id,
                    instance=instance,
                    method=method,
                    rest=checked,
                    query=scope["query_string"],
                    headers=scope["headers"],
                    body=_body(scope, receive),
                ),
                session,
            )
        status = relayed.status
        return RelayedResponse(relayed)
    except GateClosed as exc:
        status = exc.status
        raise ProblemError(
            exc.status, "proxy-busy", exc.detail, headers={"Retry-After": str(exc.retry_after)}
        ) from None
    except UpstreamFailed as exc:
        status = 503
        raise ProblemError(
            503,
            "upstream-unavailable",
            f"Workfront did not answer the call ({exc})",
            headers={"Retry-After": "5"},
        ) from None
    except ProblemError as exc:
        status = exc.status
        raise
    finally:
        # Refusals before the connection is known count under instance "".
        child(PROXY_REQUESTS, instance, method, f"{status // 100}xx").inc()
