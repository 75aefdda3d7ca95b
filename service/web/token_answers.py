"""The token answers (read and forced refresh), shared by the route and the
fast path (service.web.fastpath) so both answer exactly alike: the domain's
outcomes mapped to the answer, the metrics, and the read's parameters."""

from __future__ import annotations

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


def not_found() -> ProblemError:
    return ProblemError(404, "not-found", "no such connection")


def _token_response(runtime: Runtime, issued: IssuedToken) -> Response:
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
    try:
        if min_ttl is None:
            return await runtime.tokens.force_refresh(connection_id)
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
