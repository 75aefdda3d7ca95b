"""GET /status: a page for operators, off unless BROKER_STATUS_PAGE_ENABLED.

It needs an API key with the admin scope, sent either as ``Authorization:
Bearer <key>`` (scripts, like the rest of the API) or as the password of HTTP
Basic (any user name): a browser cannot add a Bearer header by itself, but it
prompts for Basic credentials on a 401 and keeps them for the tab. The key is
compared by hash like every other key, and never shown. The page names
connections and their expiries, never a token.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import func, select

from service.clock import now_utc
from service.db.models import STATUS_ACTIVE, STATUS_NEEDS_REAUTH, Connection, ConnectLink
from service.runtime import Runtime
from service.web.deps import RuntimeDep
from service.web.pages import not_found, render

router = APIRouter(tags=["operations"])

SOONEST = 20
_MAX_KEY = 200
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="Token broker status", charset="UTF-8"'}


def _presented_key(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, _, password = decoded.partition(":")
        return password or None
    return None


def _refused(request: Request, runtime: Runtime, status: int, message: str) -> HTMLResponse:
    response = render(
        request,
        runtime.settings,
        "error.html",
        status,
        title="Status: admin key needed" if status == 401 else "Status: not allowed",
        message=message,
        next_step=(
            "Sign in with any user name and an API key that has the admin scope as the "
            "password, or send it as a Bearer token."
        ),
        code="unauthorized" if status == 401 else "forbidden",
        retry_url=None,
        app_url=None,
    )
    if status == 401:
        response.headers.update(_CHALLENGE)
    return response


def _when(moment: datetime | None) -> str:
    return moment.strftime("%d %b %H:%M:%S") if moment else "never"


@router.get(
    "/status",
    summary="Operator page: connections by status and the soonest expiries (admin key)",
    response_class=HTMLResponse,
    responses={
        401: {"description": "HTML page: no admin key (Bearer, or HTTP Basic password)"},
        403: {"description": "HTML page: the key lacks the admin scope"},
        404: {"description": "HTML page: BROKER_STATUS_PAGE_ENABLED is off"},
    },
)
async def status_page(request: Request, runtime: RuntimeDep) -> HTMLResponse:
    settings = runtime.settings
    if not settings.status_page_enabled:
        return not_found(request, settings)
    key = _presented_key(request)
    if key is None or len(key) > _MAX_KEY:
        return _refused(request, runtime, 401, "This page needs an API key with the admin scope.")
    principal = await runtime.authenticator.authenticate(key)
    if principal is None:
        return _refused(request, runtime, 401, "That API key is unknown or revoked.")
    if not principal.allows("admin"):
        return _refused(request, runtime, 403, "That API key lacks the admin scope.")
    now = now_utc()
    async with runtime.database() as db:
        by_status = dict(
            (
                await db.execute(
                    select(Connection.status, func.count()).group_by(Connection.status)
                )
            ).all()
        )
        pending_links = await db.scalar(
            select(func.count())
            .select_from(ConnectLink)
            .where(ConnectLink.used_at.is_(None), ConnectLink.expires_at > now)
        )
        soonest = (
            await db.execute(
                select(
                    Connection.id,
                    Connection.user_id,
                    Connection.external_ref,
                    Connection.expires_at,
                    Connection.next_refresh_at,
                    Connection.refresh_failures,
                    Connection.last_error_class,
                )
                .where(Connection.status == STATUS_ACTIVE)
                .order_by(Connection.expires_at)
                .limit(SOONEST)
            )
        ).all()
    counts = [
        ("Active", by_status.get(STATUS_ACTIVE, 0)),
        ("Needs re-authorization", by_status.get(STATUS_NEEDS_REAUTH, 0)),
        ("All connections", sum(by_status.values())),
        ("Connect links not yet used", pending_links or 0),
    ]
    rows = [
        {
            "id": row.id,
            "user_id": row.user_id,
            "external_ref": row.external_ref or "",
            "expires_at": _when(row.expires_at),
            "in": _minutes(row.expires_at, now),
            "next_refresh_at": _when(row.next_refresh_at),
            "failures": row.refresh_failures,
            "last_error": row.last_error_class or "",
        }
        for row in soonest
    ]
    return render(
        request,
        settings,
        "status.html",
        200,
        counts=counts,
        rows=rows,
        limit=SOONEST,
        generated_at=now.strftime("%Y-%m-%d %H:%M:%S UTC"),
        instance=", ".join(i.host for i in settings.instances.values()),
    )


def _minutes(moment: datetime, now: datetime) -> str:
    seconds = int((moment - now).total_seconds())
    if seconds < 0:
        return "expired"
    if seconds < 120:
        return f"{seconds} s"
    return f"{seconds // 60} min"
