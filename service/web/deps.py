"""FastAPI dependencies: the runtime, the caller, the scope check."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError

from service.apikeys.authenticator import Principal
from service.apikeys.keys import Scope
from service.logs import note_client
from service.runtime import Runtime
from service.web.problems import ProblemError

_bearer = HTTPBearer(auto_error=False, description="An API key made by `clients create`.")


async def get_runtime(request: Request) -> Runtime:
    # async on purpose: FastAPI runs a plain def dependency in a worker thread.
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
    note_client(principal.client_id)
    return principal


def require_scope(scope: Scope) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.allows(scope):
            raise ProblemError(403, "forbidden", f"this API key lacks the {scope} scope")
        return principal

    return check


Model = TypeVar("Model", bound=BaseModel)


def json_body(model: type[Model]) -> Callable[[Request], Awaitable[Model]]:
    """Parse the JSON body as a dependency, so it runs after the API-key check.

    FastAPI parses a declared body before any dependency: a caller without a
    key would learn about our schema (422) before being told to authenticate.
    """

    async def parse(request: Request) -> Model:
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            raise RequestValidationError(
                [{"type": "content_type", "loc": ("body",), "msg": "must be application/json"}]
            )
        try:
            return model.model_validate_json(await request.body())
        except ValidationError as exc:
            errors = exc.errors(include_input=False, include_url=False)
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in errors]
            ) from None

    return parse


def json_body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI requestBody for a route that uses json_body."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }


TokensReader = Annotated[Principal, Depends(require_scope("tokens:read"))]
ConnectionsReader = Annotated[Principal, Depends(require_scope("connections:read"))]
ConnectionsWriter = Annotated[Principal, Depends(require_scope("connections:write"))]
Admin = Annotated[Principal, Depends(require_scope("admin"))]
