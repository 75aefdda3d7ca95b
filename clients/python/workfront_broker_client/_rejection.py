"""Whether Workfront said the session is no longer valid.

Workfront answers an expired or logged-out session with a 401 and
``{"error": {"class": "com.attask.common.AuthenticationException", "message":
"You are not currently logged in."}}``, and some answers carry that body with
a 2xx status. Only small JSON bodies are looked into: a large answer (an
export) is never an error body, and is not read here.
"""

from __future__ import annotations

from collections.abc import Mapping

# Bodies beyond this are passed on unread.
LONGEST_ERROR_BODY = 64 * 1024
_MARKS = (b"AuthenticationException", b"not currently logged in")


def body_worth_reading(headers: Mapping[str, str]) -> bool:
    """A body that might be Workfront's session error (small JSON)."""
    if "json" not in headers.get("content-type", "").lower():
        return False
    length = headers.get("content-length")
    return length is not None and length.isdigit() and int(length) <= LONGEST_ERROR_BODY


def session_rejected(status: int, body: bytes | None) -> bool:
    """Workfront's answer says the session is dead (``body``: None when not read)."""
    if status == 401:
        return True
    return body is not None and any(mark in body for mark in _MARKS)
