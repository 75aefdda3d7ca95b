"""The Workfront proxy's route: a thin handler over service.proxy."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from service.apikeys.authenticator import Principal
from service.apikeys.keys import Scope as KeyScope
from service.metrics import PROXY_REQUESTS
from service.proxy.gate import GateClosed
from service.proxy.paths import upstream_rest
from service.proxy.relay import ProxyRequest, Relayed, UpstreamFailed
from service.web.deps import RuntimeDep, get_principal
from service.web.problems import ProblemError, ResponsesDoc, auth_errors, problem_doc
from service.web.token_answers import MIN_TTL_DEFAULT, session_problems

PROXY_PATH = "/v1/connections/{connection_id}/workfront/attask/api/{rest:path}"
_MARKER = "/workfront/attask/api/"
# Until several instances are configured (issue 13), every connection is on this one.
DEFAULT_INSTANCE = "default"
PROXY_SCOPES: tuple[KeyScope, ...] = ("workfront:proxy", "tokens:read")

router = APIRouter(tags=["workfront"])

# Workfront's own answers (any status, its JSON) come back as they are: every
# status the broker itself may answer with a problem may also be Workfront's.
_WORKFRONTS: dict[str, Any] = {"application/json": {"schema": {}}}


def _or_workfronts(doc: dict[str, Any]) -> dict[str, Any]:
    # Without "model": FastAPI would put the Problem schema on application/json too.
    described = {key: value for key, value in doc.items() if key != "model"}
    return {**described, "content": {**doc["content"], **_WORKFRONTS}}


_ERRORS: ResponsesDoc = {
    status: _or_workfronts(doc)
    for status, doc in {
        **auth_errors(lacks="both the workfront:proxy and the tokens:read scope"),
        404: problem_doc(404, "Unknown connection, or a path outside attask/api/ (sent nowhere)."),
        409: problem_doc(
            409, "The connection needs re-authorization (type ends with needs-reauth)."
        ),
        429: problem_doc(
            429, "Too many calls to this instance are waiting here, or Workfront's own 429."
        ),
        503: problem_doc(
            503, "Workfront did not answer, or calls waited too long here; see Retry-After."
        ),
    }.items()
}
_ANSWERS: ResponsesDoc = {
    200: {"description": "Workfront's answer, as it gave it.", "content": _WORKFRONTS},
    **_ERRORS,
    "default": {"description": "Workfront's answer, as it gave it.", "content": _WORKFRONTS},
}


_DESCRIPTION = (
    "The request (query, body, `Content-Type`, `Accept`) goes to"
    " `<instance>/attask/api/{rest}` with the connection's session added; the"
    " caller's `Authorization`, cookies, `sessionID` and `apiKey` stay here."
    " Workfront's status, body and `Content-Type` come back as they are"
    " (`Set-Cookie` and hop-by-hop headers dropped, `Retry-After` kept), streamed."
    " When Workfront says the session is no longer valid (a 401, or an error body"
    ' naming `AuthenticationException` or "not currently logged in", whatever the'
    " status), the broker refreshes once (shared by every caller of the connection)"
    " and sends the request once more; a body over 1 MiB is streamed and sent once."
    " Paths outside `attask/api/`, or that would leave it once decoded (`..`,"
    " `%2e%2e`, `//`, backslashes), answer 404 and reach nobody. At most"
    " `BROKER_PROXY_CONCURRENCY` calls per instance go to Workfront at once from"
    " each broker process; beyond that calls wait, and past the queue's bounds the"
    " answer is 429 or 503 with `Retry-After`. A key with only `workfront:proxy`"
    " can call Workfront but never read a session."
)


async def _proxy_caller(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if not any(principal.allows(scope) for scope in PROXY_SCOPES):
        raise ProblemError(
            403, "forbidden", "this API key lacks the workfront:proxy (or tokens:read) scope"
        )
    return principal


ProxyCaller = Annotated[Principal, Depends(_proxy_caller)]


def _raw_rest(scope: Scope) -> str | None:
    """What follows ``/workfront/attask/api/`` in the path as the caller sent it."""
    raw = scope.get("raw_path")
    if not isinstance(raw, bytes):
        return None
    path = raw.decode("latin-1")
    head, marker, rest = path.partition(_MARKER)
    # The route matched the decoded path; the raw one must say the same, plainly.
    if not marker or not head.startswith("/v1/connections/") or "%" in head:
        return None
    return rest


class _RelayedResponse(Response):
    """Workfront's answer, streamed to the caller; the upstream connection and
    the gate's turn are given back however the streaming ends."""

    def __init__(self, relayed: Relayed) -> None:
        self._relayed = relayed
        self.status_code = relayed.status
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relayed = self._relayed
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": relayed.status,
                    "headers": relayed.headers,
                }
            )
            async for chunk in relayed.chunks():
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            relayed.close()


async def proxy(
    connection_id: uuid.UUID,
    rest: str,
    request: Request,
    runtime: RuntimeDep,
    _: ProxyCaller,
) -> Response:
    method = request.method if request.method in ("GET", "POST", "PUT", "DELETE") else "GET"
    status = 500  # counted as the answer's class, the broker's own refusals included
    try:
        raw = _raw_rest(request.scope)
        checked = upstream_rest(raw) if raw is not None else None
        if checked is None:
            raise ProblemError(404, "not-found", "no such Workfront API path")
        with session_problems():
            session = await runtime.tokens.get_token(connection_id, min_ttl=MIN_TTL_DEFAULT)
            relayed = await runtime.relay.call(
                ProxyRequest(
                    connection_id=connection_id,
                    instance=DEFAULT_INSTANCE,
                    method=method,
                    rest=checked,
                    query=request.scope["query_string"],
                    headers=request.scope["headers"],
                    body=request.stream(),
                ),
                session,
            )
        status = relayed.status
        return _RelayedResponse(relayed)
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
        PROXY_REQUESTS.labels(
            instance=DEFAULT_INSTANCE, method=method, status=f"{status // 100}xx"
        ).inc()


# One operation per method (each its own operationId in the OpenAPI document).
for _method in ("GET", "POST", "PUT", "DELETE"):
    router.add_api_route(
        PROXY_PATH,
        proxy,
        methods=[_method],
        name=f"call_workfront_{_method.lower()}",
        summary=f"Call Workfront as the connection's user ({_method})",
        description=_DESCRIPTION,
        response_class=Response,
        responses=_ANSWERS,
    )
