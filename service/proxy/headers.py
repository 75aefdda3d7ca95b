"""What crosses the proxy in each direction.

To Workfront: only what describes the request (``Content-Type``, ``Accept``,
``Accept-Language``; ``Content-Length`` of a body sent as it arrives), then
the session header. Everything else the caller sent stays here: its
``Authorization`` (the broker API key), cookies, any ``sessionID`` or
``apiKey`` of its own, forwarding and tracing headers.

Back to the caller: Workfront's headers but the hop-by-hop ones (RFC 9110
§7.6.1, and any the answer's ``Connection`` names), ``Set-Cookie`` (a
Workfront cookie is the user's, not the caller's), and those the broker's
own server writes (length and encoding: the body is decoded and re-framed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

_TO_WORKFRONT = frozenset({b"content-type", b"accept", b"accept-language"})
_NEVER_BACK = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "set-cookie",
        "set-cookie2",
        "content-length",
        "content-encoding",
        "date",
        "server",
    }
)


def to_workfront(
    caller: Iterable[tuple[bytes, bytes]], session: Mapping[str, str], *, streamed_length: bool
) -> dict[str, str]:
    """The headers of the upstream request: the caller's descriptive ones, then
    the session's (``streamed_length``: keep the caller's Content-Length, for
    a body passed on as it arrives)."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in caller:
        name = raw_name.lower()
        if name in _TO_WORKFRONT or (streamed_length and name == b"content-length"):
            headers[name.decode("latin-1")] = raw_value.decode("latin-1")
    headers.update(session)
    return headers


def to_caller(workfront: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """The headers of Workfront's answer the caller gets."""
    pairs = list(workfront)
    named_by_connection = {
        token.strip().lower()
        for name, value in pairs
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in pairs
        if name.lower() not in _NEVER_BACK and name.lower() not in named_by_connection
    ]
