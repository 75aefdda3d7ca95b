"""Typed Workfront failures, and which one an upstream answer stands for.

Callers must tell a transient failure (keep the tokens, try again later) from
a revoked grant (the user must authorize again; never present that refresh
token again). The classification is pure: it reads an answer's status,
headers and body and never performs I/O, so it is tested on its own
(tests/unit/workfront/test_errors.py).

Invariants:
- ``detail`` is safe to log and store: it quotes an upstream body only after
  ``redact`` removed the secrets the request carried and any token-like text,
  and cut it short.
- Invalid client credentials (RFC 6749 §5.2 ``invalid_client``) are a
  configuration problem that leaves every grant intact, so they are not
  ``GrantRevokedError``: one mistyped secret must not make every user connect
  again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

_TRANSIENT_STATUSES = {408, 429}
_MAX_DIAGNOSTIC_CHARS = 300
# Anything that looks like a token: long runs of token characters.
_TOKENISH = re.compile(r"[A-Za-z0-9_\-.~+/=]{20,}")


class WorkfrontError(Exception):
    """Base of every upstream failure. ``detail`` is safe to log and store."""

    def __init__(self, detail: str, *, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


class TransientError(WorkfrontError):
    """Network, timeout, 5xx, 408 or 429: the grant is intact, try again later."""

    def __init__(
        self, detail: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(detail, status=status)
        self.retry_after = retry_after


class ClientCredentialsRejected(TransientError):
    """The token endpoint named our client credentials invalid: a configuration
    problem that leaves every grant intact (retried with backoff)."""


class GrantRevokedError(WorkfrontError):
    """Any other 4xx from the token endpoint: the code or refresh token is dead."""


class SessionRejectedError(WorkfrontError):
    """The API refused a sessionID (401): the session is gone, the grant may be fine."""


def redact(text: str, *secrets: str | None) -> str:
    """Shorten an upstream body for diagnosis, removing secrets and token-like strings."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = _TOKENISH.sub("[redacted]", text)
    return text[:_MAX_DIAGNOSTIC_CHARS]


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Retry-After in seconds (never negative); None when absent or an HTTP date.

    ``headers`` is looked up as given: aiohttp's are case-insensitive.
    """
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def names_invalid_client(body: bytes) -> bool:
    """Whether an error answer says ``{"error": "invalid_client"}`` (RFC 6749 §5.2).

    The stdlib parser, as for every Workfront body: it accepts what Workfront
    might send, NaN included, that stricter ones refuse.
    """
    try:
        payload = json.loads(body)
    except ValueError:
        return False
    return isinstance(payload, dict) and payload.get("error") == "invalid_client"


def token_endpoint_error(
    status: int, headers: Mapping[str, str], body: bytes, *, secrets: Iterable[str | None] = ()
) -> WorkfrontError | None:
    """The error a token-endpoint answer stands for; None for a 200, whose body
    the caller reads. ``secrets`` (the code or refresh token presented, the
    client secret) never reach the detail."""
    if status == 200:
        return None
    if status >= 500 or status in _TRANSIENT_STATUSES:
        return TransientError(
            f"token endpoint answered {status}", status=status, retry_after=retry_after(headers)
        )
    if status >= 400:
        if names_invalid_client(body):
            # Our app's credentials were refused, not the user's grant: the
            # request was not processed, so the tokens stay good.
            return ClientCredentialsRejected(
                f"token endpoint refused the client credentials ({status})", status=status
            )
        text = redact(body.decode("utf-8", errors="replace"), *secrets)
        return GrantRevokedError(f"token endpoint answered {status}: {text}", status=status)
    return TransientError(f"token endpoint answered {status}", status=status)


def session_lookup_error(status: int) -> WorkfrontError | None:
    """The error a session lookup's status stands for; None for a 200 (whose
    body may still be an error: Workfront sometimes answers errors with 200)."""
    if status == 200:
        return None
    if status == 401:
        return SessionRejectedError("session lookup answered 401", status=status)
    return TransientError(f"session lookup answered {status}", status=status)
