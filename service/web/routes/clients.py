"""API clients (internal services) and their keys; admin only (see service.apikeys.clients)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Response

from service.apikeys import clients as api_clients
from service.apikeys.clients import ClientCreate
from service.web.deps import Admin, RuntimeDep, json_body, json_body_doc
from service.web.problems import ProblemError, auth_errors, problem_doc
from service.web.schemas import ClientCreated, ClientOut

router = APIRouter(prefix="/v1/clients", tags=["clients"])

_AUTH_ERRORS = auth_errors(lacks="the admin scope")


@router.post(
    "",
    summary="Create an API client; its key is shown once",
    status_code=201,
    response_model=ClientCreated,
    responses=_AUTH_ERRORS,
    openapi_extra=json_body_doc(ClientCreate),
)
async def post_client(
    runtime: RuntimeDep,
    principal: Admin,
    body: Annotated[ClientCreate, Depends(json_body(ClientCreate))],
) -> ClientCreated:
    if api_clients.widens(principal, body):
        raise ProblemError(
            403, "forbidden", "a key cannot make one that reaches more than it does itself"
        )
    unknown = [name for name in body.instances or () if name not in runtime.settings.instances]
    if unknown:
        raise ProblemError(422, "unknown-instance", f"no such instance: {', '.join(unknown)}")
    created = await api_clients.create_client(
        runtime.database, body, created_by=principal.client_id
    )
    return ClientCreated(
        id=created.id,
        name=created.name,
        scopes=created.scopes,
        instances=created.instances,
        connections=created.connections,
        api_key=created.api_key,
    )


@router.get(
    "",
    summary="List API clients (never their keys)",
    response_model=list[ClientOut],
    responses=_AUTH_ERRORS,
)
async def list_clients(runtime: RuntimeDep, _: Admin) -> list[ClientOut]:
    rows = await api_clients.list_clients(runtime.database)
    return [ClientOut.model_validate(row) for row in rows]


@router.delete(
    "/{client_id}",
    summary="Revoke an API client; its key stops working at once",
    status_code=204,
    response_class=Response,
    responses={**_AUTH_ERRORS, 404: problem_doc(404, "Unknown or already revoked client.")},
)
async def revoke_client(client_id: uuid.UUID, runtime: RuntimeDep, principal: Admin) -> Response:
    try:
        await api_clients.revoke_client(
            runtime.database, runtime.authenticator, client_id, revoked_by=principal.client_id
        )
    except api_clients.UnknownClient:
        raise ProblemError(404, "not-found", "no such active client") from None
    return Response(status_code=204)
