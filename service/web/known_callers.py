"""What the fast paths (service.web.fastpath, service.web.proxy_fastpath) know
of a request before routing: a caller whose API key the hot cache holds, and
a connection id in its canonical form. Anything they are not sure about is
None, and the documented route decides."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from starlette.types import Scope

from service.apikeys.authenticator import Principal

if TYPE_CHECKING:
    from service.runtime import Runtime


def known_caller(scope: Scope) -> tuple[Runtime, Principal] | None:
    """The runtime and the caller, when the caller sent one Bearer key the hot
    cache knows valid; else None."""
    app = scope.get("app")
    runtime: Runtime | None = getattr(getattr(app, "state", None), "runtime", None)
    if runtime is None:
        return None
    key = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if key is not None:
                return None  # two Authorization headers: let the route judge
            key = value
    if key is None or not key.startswith(b"Bearer ") or len(key) > 7 + 200:
        return None
    principal = runtime.authenticator.cached(key[7:].decode("latin-1"))
    if principal is None:
        return None
    return runtime, principal


def canonical_uuid(raw_id: str) -> uuid.UUID | None:
    """``raw_id`` as a UUID when it is written in the canonical form; else None."""
    try:
        connection_id = uuid.UUID(raw_id)
    except ValueError:
        return None
    return connection_id if str(connection_id) == raw_id else None
