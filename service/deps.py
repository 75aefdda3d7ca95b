"""FastAPI dependencies: the runtime, the caller, the scope check."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.auth import Principal
from service.problems import ProblemError
from service.runtime import Runtime

_bearer = HTTPBearer(auto_error=False, description="An API key made by `clients create`.")


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_principal(
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or not credentials.credentials:
        raise ProblemError(401, "unauthorized", "an API key is required", headers=challenge)
    key = credentials.credentials
    if len(key) > 200:
        raise ProblemError(401, "unauthorized", "unknown API key", headers=challenge)
    principal = await runtime.authenticator.authenticate(key)
    if principal is None:
        raise ProblemError(401, "unauthorized", "unknown API key", headers=challenge)
    return principal


def require_scope(scope: str) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.allows(scope):
            raise ProblemError(403, "forbidden", f"this API key lacks the {scope} scope")
        return principal

    return check


TokensReader = Annotated[Principal, Depends(require_scope("tokens:read"))]
ConnectionsReader = Annotated[Principal, Depends(require_scope("connections:read"))]
ConnectionsWriter = Annotated[Principal, Depends(require_scope("connections:write"))]
Admin = Annotated[Principal, Depends(require_scope("admin"))]
