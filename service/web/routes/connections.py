"""Connections and their tokens, for internal services."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select

from service.crypto import DecryptionError
from service.db.models import Connection
from service.metrics import TOKEN_REQUESTS
from service.runtime import Runtime
from service.tokens.broker import ConnectionNotFound, IssuedToken, NeedsReauth, UpstreamUnavailable
from service.web.deps import ConnectionsReader, ConnectionsWriter, RuntimeDep, TokensReader
from service.web.problems import ProblemError, ResponsesDoc, problem_doc
from service.web.schemas import (
    NO_CONTROL_CHARS,
    ConnectionOut,
    ConnectionStatus,
    TokenOut,
    token_json,
)

router = APIRouter(prefix="/v1/connections", tags=["connections"])

_AUTH_ERRORS: ResponsesDoc = {
    401: problem_doc(401, "No API key, or an unknown one."),
    403: problem_doc(403, "The API key lacks the scope."),
    422: problem_doc(422, "Bad input."),
}
_TOKEN_ERRORS: ResponsesDoc = {
    **_AUTH_ERRORS,
    404: problem_doc(404, "Unknown connection."),
    409: problem_doc(409, "The connection needs re-authorization (type ends with needs-reauth)."),
    503: problem_doc(503, "Workfront unreachable and no usable session; see Retry-After."),
}


def _not_found() -> ProblemError:
    return ProblemError(404, "not-found", "no such connection")


def _token_response(runtime: RuntimeDep, issued: IssuedToken) -> Response:
    # A prebuilt body: the routes still declare response_model=TokenOut, so
    # the OpenAPI document is unchanged.
    return Response(
        token_json(issued, runtime.settings.workfront_url), media_type="application/json"
    )


async def issue(runtime: Runtime, connection_id: uuid.UUID, *, min_ttl: int | None) -> Response:
    """The token (min_ttl set) or forced-refresh answer; a ProblemError for the rest."""
    return _token_response(runtime, await issue_token(runtime, connection_id, min_ttl=min_ttl))


async def issue_token(
    runtime: Runtime, connection_id: uuid.UUID, *, min_ttl: int | None
) -> IssuedToken:
    """The session to answer with (counted in the metrics); a ProblemError for the rest."""
    kind = "token" if min_ttl is not None else "refresh"
    outcome = "error"
    try:
        token = await _issue_unmetered(runtime, connection_id, min_ttl=min_ttl)
        outcome = "ok"
        return token
    except ProblemError as exc:
        outcome = exc.slug
        raise
    finally:
        TOKEN_REQUESTS.labels(kind=kind, outcome=outcome).inc()


async def _issue_unmetered(
    runtime: Runtime, connection_id: uuid.UUID, *, min_ttl: int | None
) -> IssuedToken:
    broker = runtime.broker
    try:
        if min_ttl is None:
            return await broker.force_refresh(connection_id)
        return await broker.get_token(connection_id, min_ttl=min_ttl)
    except ConnectionNotFound:
        raise _not_found() from None
    except NeedsReauth:
        raise ProblemError(
            409, "needs-reauth", "the Workfront user must authorize again via /connect"
        ) from None
    except DecryptionError:
        # Tampered row or a key missing from BROKER_ENCRYPTION_KEYS: a server
        # fault, reported plainly and never papered over with another value.
        raise ProblemError(
            500,
            "stored-token-unreadable",
            "the stored token cannot be decrypted; check BROKER_ENCRYPTION_KEYS",
        ) from None
    except UpstreamUnavailable as exc:
        retry = max(1, round(exc.retry_after or 5))
        raise ProblemError(
            503,
            "upstream-unavailable",
            "Workfront is unreachable and no usable session is stored",
            headers={"Retry-After": str(retry)},
        ) from None


@router.get(
    "/{connection_id}/token",
    summary="Get a live Workfront sessionID",
    response_model=TokenOut,
    responses=_TOKEN_ERRORS,
)
async def get_token(
    connection_id: uuid.UUID,
    runtime: RuntimeDep,
    _: TokensReader,
    min_ttl: Annotated[
        int,
        Query(ge=0, le=86_400, description="Refresh first when fewer seconds than this remain."),
    ] = 60,
) -> Response:
    return await issue(runtime, connection_id, min_ttl=min_ttl)


@router.post(
    "/{connection_id}/refresh",
    summary="Force a refresh (the caller saw the session rejected)",
    response_model=TokenOut,
    responses=_TOKEN_ERRORS,
)
async def refresh_token(connection_id: uuid.UUID, runtime: RuntimeDep, _: TokensReader) -> Response:
    return await issue(runtime, connection_id, min_ttl=None)


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
    _: ConnectionsReader,
    user_id: Annotated[str | None, Query(max_length=64, pattern=NO_CONTROL_CHARS)] = None,
    external_ref: Annotated[str | None, Query(max_length=255, pattern=NO_CONTROL_CHARS)] = None,
    status: ConnectionStatus | None = None,
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
    async with runtime.sessions() as session:
        # One more than asked: whether a next page exists, without a count.
        rows = (await session.scalars(query.limit(limit + 1).offset(offset))).all()
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
    connection_id: uuid.UUID, runtime: RuntimeDep, _: ConnectionsReader
) -> ConnectionOut:
    async with runtime.sessions() as session:
        row = await session.get(Connection, connection_id)
    if row is None:
        raise _not_found()
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
        await runtime.broker.delete_connection(connection_id, client_id=principal.client_id)
    except ConnectionNotFound:
        raise _not_found() from None
    return Response(status_code=204)
