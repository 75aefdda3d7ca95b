"""Which proxied paths may reach Workfront: ``attask/api/...`` and nothing
that would leave it once decoded or normalized.

The check runs on the path as the caller sent it (ASGI's ``raw_path``), and
that raw form is what goes upstream, so what was checked is what is sent:
no segment that is ``.`` or ``..`` (plain or percent-encoded, once or
twice), no empty segment (``//``, which also covers absolute URLs), no
backslash, no encoded slash (a server that decodes it would see another
path), no control character. Anything else answers 404 and reaches nobody.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

# Characters a path segment may carry as sent (RFC 3986 pchar, '%' for escapes).
_RAW_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%-]+")
_ENCODED_SEPARATOR = re.compile(r"%(2f|5c|00)", re.IGNORECASE)


def upstream_rest(raw_rest: str) -> str | None:
    """``raw_rest`` (what follows ``attask/api/`` as sent) when it may be
    forwarded as it is; None when it must not reach anyone."""
    if not raw_rest or len(raw_rest) > 4096:
        return None
    if _ENCODED_SEPARATOR.search(raw_rest):
        return None
    for segment in raw_rest.split("/"):
        if not _RAW_SEGMENT.fullmatch(segment):
            return None  # empty (//), a backslash, a space, a control character...
        if "%" not in segment:
            if segment in (".", ".."):
                return None
            continue  # nothing to decode: what was checked is what is sent
        once = unquote(segment)
        twice = unquote(once)
        if any(part in (".", "..") for part in (segment, once, twice)):
            return None
        if any(c in part for part in (once, twice) for c in ("/", "\\")):
            return None
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in twice):
            return None
    return raw_rest
