"""The token answers (read and forced refresh), shared by the route and the
fast path (service.web.fastpath) so both answer exactly alike: the domain's
outcomes mapped to the answer, the metrics, and the read's parameters."""

from __future__ import annotations

import re
import uuid
from typing import Final

from fastapi import Response

from service.crypto import DecryptionError
from service.metrics import TOKEN_REQUESTS
from service.runtime import Runtime
from service.tokens.issued import (
    ConnectionNotFound,
    IssuedToken,
    NeedsReauth,
    UpstreamUnavailable,
)
from service.web.problems import ProblemError
from service.web.schemas import token_json

TOKEN_PATH = "/v1/connections/{connection_id}/token"
TOKENS_SCOPE: Final = "tokens:read"
# min_ttl's default and bound, as the route declares them (and the fast path reads them).
MIN_TTL_DEFAULT = 60
MIN_TTL_MAX = 86_400


# RFC 9110's If-Match: "*", or a list of entity tags (optional W/, then a
# quoted string of etagc). The route declares the pattern, so the OpenAPI
# document says exactly what is accepted.
_TAG = r'(W/)?"([\x21\x23-\x7e]*)"'
IF_MATCH_PATTERN = rf"^[ \t]*(\*|{_TAG}([ \t]*,[ \t]*{_TAG})*)[ \t]*$"
_IF_MATCH = re.compile(IF_MATCH_PATTERN)
_TAGS = re.compile(_TAG)


def parse_if_match(header: str | None) -> frozenset[str] | None:
    """The session versions an If-Match names (its strong tags' values), or
    None when there is no condition (absent, or ``*``).

    A weak tag never matches (If-Match compares strongly), so it is left out;
    a header that is not a list of entity tags is a 422.
    """
    if header is None:
        return None
    if _IF_MATCH.fullmatch(header) is None:
        raise ProblemError(
            422,
            "invalid-request",
            'If-Match must be "*" or a list of entity tags, as the ETag of a token answer',
        )
    if header.strip(" \t") == "*":
        return None
    return frozenset(value for weak, value in _TAGS.findall(header) if not weak)


def not_found() -> ProblemError:
    return ProblemError(404, "not-found", "no such connection")


def etag(issued: IssuedToken) -> bytes:
    """The strong ETag of a token answer: its session version, quoted."""
    return b'"' + issued.session_version.encode() + b'"'


def _token_response(runtime: Runtime, issued: IssuedToken) -> Response:
    # A prebuilt body: the routes still declare response_model=TokenOut, so
    # the OpenAPI document is unchanged.
    return Response(
        token_json(issued, runtime.settings.workfront_url),
        media_type="application/json",
        headers={"ETag": etag(issued).decode()},
    )


async def issue(
    runtime: Runtime,
    connection_id: uuid.UUID,
    *,
    min_ttl: int | None,
    if_match: frozenset[str] | None = None,
) -> Response:
    """The token (min_ttl set) or forced-refresh answer; a ProblemError for the rest."""
    return _token_response(
        runtime, await issue_token(runtime, connection_id, min_ttl=min_ttl, if_match=if_match)
    )


async def issue_token(
    runtime: Runtime,
    connection_id: uuid.UUID,
    *,
    min_ttl: int | None,
    if_match: frozenset[str] | None = None,
) -> IssuedToken:
    """The session to answer with (counted in the metrics); a ProblemError for the rest.

    ``min_ttl`` None: a forced refresh, conditional on ``if_match`` when given.
    """
    kind = "token" if min_ttl is not None else "refresh"
    outcome = "error"
    try:
        token = await _issue_unmetered(runtime, connection_id, min_ttl=min_ttl, if_match=if_match)
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
) -> IssuedToken:
    try:
        if min_ttl is None:
            return await runtime.tokens.force_refresh(connection_id, if_match=if_match)
        return await runtime.tokens.get_token(connection_id, min_ttl=min_ttl)
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
