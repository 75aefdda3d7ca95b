"""The token answers (read and forced refresh), shared by the route and the
fast path (service.web.fastpath) so both answer exactly alike: the domain's
outcomes mapped to the answer, the metrics, and the read's parameters."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from fastapi import Response

from service.apikeys.authenticator import Principal
from service.crypto import DecryptionError
from service.metrics import TOKEN_REQUESTS
from service.runtime import Runtime
from service.tokens.issued import (
    ConnectionNotFound,
    IssuedToken,
    NeedsReauth,
    UpstreamUnavailable,
)
from service.tokens.issuer import Reach
from service.web.problems import ProblemError
from service.web.schemas import token_json

TOKEN_PATH = "/v1/connections/{connection_id}/token"
TOKENS_SCOPE: Final = "tokens:read"
# min_ttl's default and bound, as the route declares them (and the fast path reads them).
MIN_TTL_DEFAULT = 60
MIN_TTL_MAX = 86_400


def parse_if_match(header: str | None) -> frozenset[str] | None:
    """The session versions an If-Match names, or None when there is no
    condition (absent, or ``*``).

    RFC 9110's list of entity tags: a weak tag (``W/"7"``) never matches,
    since If-Match compares strongly. Read leniently otherwise: a bare ``7``
    (a client that dropped the quotes) names version 7, and anything else
    names no session, so the broker answers the current one without a
    refresh, the safe outcome for a condition it cannot read.
    """
    if header is None or header.strip(" \t") == "*":
        return None
    versions = set()
    for member in header.split(","):
        tag = member.strip(" \t")
        if tag.startswith("W/"):
            continue
        versions.add(tag[1:-1] if len(tag) >= 2 and tag[0] == tag[-1] == '"' else tag)
    return frozenset(versions)


def not_found() -> ProblemError:
    return ProblemError(404, "not-found", "no such connection")


def etag(issued: IssuedToken) -> bytes:
    """The strong ETag of a token answer: its session version, quoted."""
    return b'"' + issued.session_version.encode() + b'"'


def _token_response(runtime: Runtime, issued: IssuedToken) -> Response:
    # A prebuilt body: the routes still declare response_model=TokenOut, so
    # the OpenAPI document is unchanged.
    return Response(
        token_json(issued, runtime.settings.instances),
        media_type="application/json",
        headers={"ETag": etag(issued).decode()},
    )


async def issue(
    runtime: Runtime,
    connection_id: uuid.UUID,
    *,
    min_ttl: int | None,
    if_match: frozenset[str] | None = None,
    caller: Principal | None = None,
) -> Response:
    """The token (min_ttl set) or forced-refresh answer; a ProblemError for the rest."""
    issued = await issue_token(
        runtime, connection_id, min_ttl=min_ttl, if_match=if_match, caller=caller
    )
    return _token_response(runtime, issued)


def reach_of(caller: Principal | None) -> Reach:
    """What the token path must check of a connection for this caller (None: nothing)."""
    return caller.reaches if caller is not None and caller.restricted else None


async def issue_token(
    runtime: Runtime,
    connection_id: uuid.UUID,
    *,
    min_ttl: int | None,
    if_match: frozenset[str] | None = None,
    caller: Principal | None = None,
) -> IssuedToken:
    """The session to answer with (counted in the metrics); a ProblemError for the rest.

    ``min_ttl`` None: a forced refresh, conditional on ``if_match`` when given.
    """
    kind = "token" if min_ttl is not None else "refresh"
    outcome = "error"
    try:
        token = await _issue_unmetered(
            runtime, connection_id, min_ttl=min_ttl, if_match=if_match, reach=reach_of(caller)
        )
        outcome = "ok"
        return token
    except ProblemError as exc:
        outcome = exc.slug
        raise
    finally:
        TOKEN_REQUESTS.labels(kind=kind, outcome=outcome).inc()


async def _issue_unmetered(
    runtime: Runtime,
    connection_id: uuid.UUID,
    *,
    min_ttl: int | None,
    if_match: frozenset[str] | None,
    reach: Reach,
) -> IssuedToken:
    with session_problems():
        if min_ttl is None:
            return await runtime.tokens.force_refresh(connection_id, if_match=if_match, reach=reach)
        return await runtime.tokens.get_token(connection_id, min_ttl=min_ttl, reach=reach)


@contextmanager
def session_problems() -> Iterator[None]:
    """The token path's failures as the API answers them (the token routes, the
    fast path and the proxy alike)."""
    try:
        yield
    except ConnectionNotFound:
        raise not_found() from None
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
