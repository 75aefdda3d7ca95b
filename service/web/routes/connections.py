"""Connections and their tokens, for internal services."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import WithJsonSchema
from sqlalchemy import select

from service.db.models import Connection
from service.tokens.issued import (
    ConnectionNotFound,
)
from service.web.deps import ConnectionsReader, ConnectionsWriter, RuntimeDep, TokensReader
from service.web.problems import ResponsesDoc, auth_errors, problem_doc
from service.web.schemas import (
    NO_CONTROL_CHARS,
    ConnectionOut,
    ConnectionStatus,
    TokenOut,
)
from service.web.token_answers import (
    MIN_TTL_DEFAULT,
    MIN_TTL_MAX,
    TOKEN_PATH,
    issue,
    not_found,
    parse_if_match,
)

router = APIRouter(prefix="/v1/connections", tags=["connections"])

_AUTH_ERRORS = auth_errors()
_TOKEN_ERRORS: ResponsesDoc = {
    **_AUTH_ERRORS,
    404: problem_doc(404, "Unknown connection."),
    409: problem_doc(409, "The connection needs re-authorization (type ends with needs-reauth)."),
    503: problem_doc(503, "Workfront unreachable and no usable session; see Retry-After."),
}
_TOKEN_ANSWER: ResponsesDoc = {
    200: {
        "description": "A live session.",
        "headers": {
            "ETag": {
                "description": (
                    "Strong entity tag of this session (`session_version`, quoted): send it"
                    " as `If-Match` to force a refresh only if this session is still the"
                    " connection's."
                ),
                "schema": {"type": "string", "examples": ['"7"']},
            }
        },
    },
    **_TOKEN_ERRORS,
}


@router.get(
    TOKEN_PATH.removeprefix(router.prefix),
    summary="Get a live Workfront sessionID",
    description=(
        "Refreshes first when fewer than `min_ttl` seconds remain; concurrent callers"
        " share one refresh. A `min_ttl` beyond what a fresh session offers is answered"
        " with the freshest session (one younger than the refresh-ahead margin), so it"
        " refreshes once per session, never once per read: `expires_at` says how much"
        " life the session really has."
    ),
    response_model=TokenOut,
    responses=_TOKEN_ANSWER,
)
async def get_token(
    connection_id: uuid.UUID,
    runtime: RuntimeDep,
    caller: TokensReader,
    min_ttl: Annotated[
        int,
        Query(
            ge=0,
            le=MIN_TTL_MAX,
            description="Refresh first when fewer seconds than this remain.",
        ),
    ] = MIN_TTL_DEFAULT,
) -> Response:
    return await issue(runtime, connection_id, min_ttl=min_ttl, caller=caller)


@router.post(
    "/{connection_id}/refresh",
    summary="Force a refresh (the caller saw the session rejected)",
    description=(
        "For a caller whose Workfront call was rejected. Send the rejected session's"
        " `ETag` as `If-Match`: the broker refreshes only if the connection still holds"
        " that session, and otherwise answers the newer one at once, with no call to"
        " Workfront, so a hundred callers who saw one session die cause one refresh."
        " Without `If-Match`, a connection is refreshed upstream at most once per"
        " `BROKER_FORCE_REFRESH_MIN_INTERVAL_SECONDS` (default 1); later forced callers"
        " in that interval get the session it produced. Concurrent forced refreshes of"
        " one connection share one upstream call either way."
    ),
    response_model=TokenOut,
    responses=_TOKEN_ANSWER,
)
async def refresh_token(
    connection_id: uuid.UUID,
    runtime: RuntimeDep,
    caller: TokensReader,
    if_match: Annotated[
        str | None,
        Header(
            alias="If-Match",
            max_length=1000,
            description=(
                "The `ETag` of the session the caller saw rejected: refresh only if"
                " the connection still holds it. A list of tags refreshes if any is the"
                " current session; a weak or unknown tag names none (the current session"
                " is answered, nothing refreshed)."
            ),
            examples=['"7"'],
        ),
        # The header is absent or a string: "null" is not a value it can take.
        WithJsonSchema({"type": "string", "maxLength": 1000}),
    ] = None,
) -> Response:
    return await issue(
        runtime, connection_id, min_ttl=None, if_match=parse_if_match(if_match), caller=caller
    )


@router.get(
    "",
    summary="List connections",
    description=(
        "Oldest first, up to `limit` (default and most 1000) from `offset`. When"
        ' more match, the answer carries `Link: <…>; rel="next"` (RFC 8288)'
        " with the URL of the next page."
    ),
    response_model=list[ConnectionOut],
    responses=_AUTH_ERRORS,
)
async def list_connections(
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    caller: ConnectionsReader,
    user_id: Annotated[str | None, Query(max_length=64, pattern=NO_CONTROL_CHARS)] = None,
    external_ref: Annotated[str | None, Query(max_length=255, pattern=NO_CONTROL_CHARS)] = None,
    status: ConnectionStatus | None = None,
    instance: Annotated[str | None, Query(max_length=32, pattern=NO_CONTROL_CHARS)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[ConnectionOut]:
    query = select(Connection).order_by(Connection.created_at, Connection.id)
    if user_id is not None:
        query = query.where(Connection.user_id == user_id)
    if external_ref is not None:
        query = query.where(Connection.external_ref == external_ref)
    if status is not None:
        query = query.where(Connection.status == status)
    if instance is not None:
        query = query.where(Connection.instance == instance)
    # A key limited in reach sees only what it reaches.
    if caller.instances is not None:
        query = query.where(Connection.instance.in_(sorted(caller.instances)))
    if caller.own_only:
        query = query.where(Connection.brought_by == caller.client_id)
    async with runtime.database() as db:
        # One more than asked: whether a next page exists, without a count.
        rows = (await db.scalars(query.limit(limit + 1).offset(offset))).all()
    if len(rows) > limit:
        rows = rows[:limit]
        following = request.url.include_query_params(offset=offset + limit, limit=limit)
        # Relative (RFC 8288 resolves it against the request): right behind
        # a proxy too, where this process's own URL is not the caller's.
        response.headers["Link"] = f'<{following.path}?{following.query}>; rel="next"'
    return [ConnectionOut.model_validate(row) for row in rows]


@router.get(
    "/{connection_id}",
    summary="Show one connection",
    response_model=ConnectionOut,
    responses={**_AUTH_ERRORS, 404: problem_doc(404, "Unknown connection.")},
)
async def get_connection(
    connection_id: uuid.UUID, runtime: RuntimeDep, caller: ConnectionsReader
) -> ConnectionOut:
    async with runtime.database() as db:
        row = await db.get(Connection, connection_id)
    if row is None or not caller.reaches(row.instance, row.brought_by):
        raise not_found()  # outside the key's reach: the same answer, no existence oracle
    return ConnectionOut.model_validate(row)


@router.delete(
    "/{connection_id}",
    summary="Delete a connection and its stored tokens",
    status_code=204,
    response_class=Response,
    responses={**_AUTH_ERRORS, 404: problem_doc(404, "Unknown connection.")},
)
async def delete_connection(
    connection_id: uuid.UUID, runtime: RuntimeDep, principal: ConnectionsWriter
) -> Response:
    try:
        await runtime.connections.delete_connection(
            connection_id,
            client_id=principal.client_id,
            reach=principal.reaches if principal.restricted else None,
        )
    except ConnectionNotFound:
        raise not_found() from None
    return Response(status_code=204)
