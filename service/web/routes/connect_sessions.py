"""POST /v1/connect-sessions: make a connect link (see service.signin.links)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends

from service.signin.links import ReturnUrlNotAllowed, create_connect_link
from service.web.deps import ConnectionsWriter, RuntimeDep, json_body, json_body_doc
from service.web.problems import ProblemError, auth_errors
from service.web.schemas import ConnectSessionCreate, ConnectSessionOut

router = APIRouter(prefix="/v1/connect-sessions", tags=["connections"])

_ERRORS = auth_errors(
    lacks="the connections:write scope",
    bad_input="Bad input, or a return_url outside the allow-list.",
)


@router.post(
    "",
    summary="Make a one-time connect link for one person",
    status_code=201,
    response_model=ConnectSessionOut,
    responses=_ERRORS,
    openapi_extra=json_body_doc(ConnectSessionCreate),
)
async def create_connect_session(
    runtime: RuntimeDep,
    principal: ConnectionsWriter,
    body: Annotated[ConnectSessionCreate, Depends(json_body(ConnectSessionCreate))],
) -> ConnectSessionOut:
    settings = runtime.settings
    instance = body.instance
    if instance is None:
        only = settings.instances.only
        if only is None:
            raise ProblemError(
                422, "instance-required", "several instances are configured: name one"
            )
        instance = only.name
    if instance not in settings.instances or not principal.reaches_instance(instance):
        # Outside the key's reach reads as not there: no list of others' instances.
        raise ProblemError(422, "unknown-instance", "no such instance (see GET /v1/instances)")
    try:
        link = await create_connect_link(
            runtime.database,
            external_ref=body.external_ref,
            return_url=body.return_url,
            instance=instance,
            allowed_return_urls=settings.return_url_prefixes,
            ttl=timedelta(seconds=settings.connect_link_ttl_seconds),
            created_by=principal.client_id,
        )
    except ReturnUrlNotAllowed:
        raise ProblemError(
            422,
            "return-url-not-allowed",
            "return_url is not under any BROKER_ALLOWED_RETURN_URLS prefix",
        ) from None
    return ConnectSessionOut(
        id=link.id,
        url=f"{settings.public_base_url}/connect/{link.token}",
        expires_at=link.expires_at,
    )
