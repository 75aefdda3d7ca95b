"""API clients (internal services) and their keys; admin only."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from sqlalchemy import select, update

from service.apikeys.authenticator import hash_key, key_hint, new_api_key
from service.clock import now_utc
from service.connections.events import record_event
from service.db.engine import SessionFactory
from service.db.models import ApiClient
from service.web.deps import Admin, RuntimeDep, json_body, json_body_doc
from service.web.problems import ProblemError, ResponsesDoc, problem_doc
from service.web.schemas import ClientCreate, ClientCreated, ClientOut

router = APIRouter(prefix="/v1/clients", tags=["clients"])

_AUTH_ERRORS: ResponsesDoc = {
    401: problem_doc(401, "No API key, or an unknown one."),
    403: problem_doc(403, "The API key lacks the admin scope."),
    422: problem_doc(422, "Bad input."),
}


async def create_client(
    sessions: SessionFactory,
    *,
    name: str,
    scopes: list[str],
    created_by: uuid.UUID | None,
) -> ClientCreated:
    """Store a new client and return its key (the only time it exists in plain text)."""
    key = new_api_key()
    client_id = uuid.uuid4()
    async with sessions() as session, session.begin():
        session.add(
            ApiClient(
                id=client_id,
                name=name,
                key_hash=hash_key(key),
                key_hint=key_hint(key),
                scopes=scopes,
            )
        )
        await record_event(
            session,
            "client.created",
            client_id=created_by,
            new_client_id=str(client_id),
            name=name,
            scopes=scopes,
        )
    return ClientCreated(id=client_id, name=name, scopes=scopes, api_key=key)


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
    return await create_client(
        runtime.sessions, name=body.name, scopes=list(body.scopes), created_by=principal.client_id
    )


@router.get(
    "",
    summary="List API clients (never their keys)",
    response_model=list[ClientOut],
    responses=_AUTH_ERRORS,
)
async def list_clients(runtime: RuntimeDep, _: Admin) -> list[ClientOut]:
    async with runtime.sessions() as session:
        rows = (await session.scalars(select(ApiClient).order_by(ApiClient.created_at))).all()
    return [ClientOut.model_validate(row) for row in rows]


@router.delete(
    "/{client_id}",
    summary="Revoke an API client; its key stops working at once",
    status_code=204,
    response_class=Response,
    responses={**_AUTH_ERRORS, 404: problem_doc(404, "Unknown or already revoked client.")},
)
async def revoke_client(client_id: uuid.UUID, runtime: RuntimeDep, principal: Admin) -> Response:
    async with runtime.sessions() as session, session.begin():
        revoked = await session.scalar(
            update(ApiClient)
            .where(ApiClient.id == client_id, ApiClient.revoked_at.is_(None))
            .values(revoked_at=now_utc())
            .returning(ApiClient.id)
        )
        if revoked is None:
            raise ProblemError(404, "not-found", "no such active client")
        await record_event(
            session,
            "client.revoked",
            client_id=principal.client_id,
            revoked_client_id=str(client_id),
        )
    runtime.authenticator.forget()
    return Response(status_code=204)
