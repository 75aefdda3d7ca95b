"""One-time connect links that internal services hand to one person."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import timedelta
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends
from sqlalchemy import delete

from service.clock import now_utc
from service.connections.events import record_event
from service.db.models import ConnectSession
from service.web.deps import ConnectionsWriter, RuntimeDep, json_body, json_body_doc
from service.web.problems import ProblemError, ResponsesDoc, problem_doc
from service.web.schemas import ConnectSessionCreate, ConnectSessionOut

router = APIRouter(prefix="/v1/connect-sessions", tags=["connections"])

_ERRORS: ResponsesDoc = {
    401: problem_doc(401, "No API key, or an unknown one."),
    403: problem_doc(403, "The API key lacks the connections:write scope."),
    422: problem_doc(422, "Bad input, or a return_url outside the allow-list."),
}


def connect_session_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def return_url_allowed(url: str, prefixes: list[str]) -> bool:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    # A prefix must match at a boundary so https://app.example.com does not admit
    # https://app.example.com.evil.net.
    for prefix in prefixes:
        if url == prefix:
            return True
        if url.startswith(prefix) and (prefix.endswith("/") or url[len(prefix)] in "/?#"):
            return True
    return False


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
    if not return_url_allowed(body.return_url, settings.return_url_prefixes):
        raise ProblemError(
            422,
            "return-url-not-allowed",
            "return_url is not under any BROKER_ALLOWED_RETURN_URLS prefix",
        )
    token = secrets.token_urlsafe(32)
    session_id = uuid.uuid4()
    expires_at = now_utc() + timedelta(seconds=settings.connect_link_ttl_seconds)
    async with runtime.sessions() as session, session.begin():
        # Expired links (and, by cascade, their attempts) are removed as new
        # ones are made; no separate job needed.
        await session.execute(
            delete(ConnectSession).where(ConnectSession.expires_at < now_utc() - timedelta(days=1))
        )
        session.add(
            ConnectSession(
                id=session_id,
                token_hash=connect_session_digest(token),
                external_ref=body.external_ref,
                return_url=body.return_url,
                created_by=principal.client_id,
                expires_at=expires_at,
            )
        )
        await record_event(
            session,
            "connect_session.created",
            client_id=principal.client_id,
            connect_session_id=str(session_id),
        )
    return ConnectSessionOut(
        id=session_id,
        url=f"{settings.public_base_url}/connect/{token}",
        expires_at=expires_at,
    )
