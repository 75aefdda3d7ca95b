"""The Workfront proxy's route: a thin handler over service.web.proxy_answers
(which the fast path, service.web.proxy_fastpath, calls too)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from service.apikeys.authenticator import Principal
from service.web.deps import RuntimeDep, get_principal
from service.web.problems import ProblemError, ResponsesDoc, auth_errors, problem_doc
from service.web.proxy_answers import PROXY_METHODS, PROXY_PATH, PROXY_SCOPES, proxy_answer

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


async def proxy(
    connection_id: uuid.UUID,
    rest: str,  # documented; the relay reads the path as sent (raw_rest)
    request: Request,
    runtime: RuntimeDep,
    caller: ProxyCaller,
) -> Response:
    return await proxy_answer(runtime, connection_id, request.scope, request.receive, caller=caller)


# One operation per method (each its own operationId in the OpenAPI document).
for _method in PROXY_METHODS:
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
