"""The browser flow: /connect, /oauth/authorize, /oauth/callback.

The ``state`` is single-use, stored only as a SHA-256 hash with a 10-minute
expiry, and bound to the browser that started the attempt by an HttpOnly,
SameSite=Lax cookie (also stored hashed). Every failure renders an HTML page
that says what went wrong, links back to /connect and stores nothing. The
code and the client secret only ever go to the configured instance, never to a
host derived from the callback's ``domain``/``lane``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import httpx
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import delete, select, update

from service.auth import now_utc
from service.broker import ConnectLinkSpent
from service.crypto import row_aad
from service.deps import RuntimeDep
from service.models import Authorization, ConnectSession
from service.routes.connect_sessions import connect_session_digest
from service.workfront import (
    ClientCredentialsRejected,
    GrantRevokedError,
    SessionRejectedError,
    TransientError,
    WorkfrontError,
    pkce_challenge,
)

router = APIRouter(tags=["browser flow"])
log = logging.getLogger(__name__)
templates = Jinja2Templates(directory=str(Path(__file__).resolve().parent.parent / "templates"))

ATTEMPT_COOKIE = "wtb_attempt"
ATTEMPT_TTL = timedelta(minutes=10)
_MAX_PARAM = 2048
# No referrer (the callback URL carries the code) and no caching of these pages.
_PAGE_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def _page(request: Request, name: str, status: int, **context: object) -> HTMLResponse:
    response = templates.TemplateResponse(request, name, context, status_code=status)
    response.headers.update(_PAGE_HEADERS)
    return response


class CallbackFailure(Exception):
    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


def _bad(message: str, title: str = "Could not connect Workfront") -> CallbackFailure:
    return CallbackFailure(400, title, message)


def _error_page(request: Request, failure: CallbackFailure) -> HTMLResponse:
    response = _page(
        request,
        "error.html",
        failure.status,
        title=failure.title,
        message=failure.message,
        connect_url=str(request.url_for("connect_page")),
    )
    response.delete_cookie(ATTEMPT_COOKIE, path="/oauth")
    return response


# Lengths are checked by the handlers, so an oversized value gets the HTML
# error page a browser user can act on, not a JSON validation error.
OptionalParam = Annotated[str | None, Query()]
SessionParam = Annotated[
    str | None,
    Query(alias="session", description="A connect-session token from POST /v1/connect-sessions."),
]


@router.get(
    "/connect",
    summary="Page with a 'Connect Workfront' button",
    response_class=HTMLResponse,
    responses={400: {"description": "HTML page: the connect link is unknown, used or expired"}},
)
async def connect_page(
    request: Request, runtime: RuntimeDep, link: SessionParam = None
) -> HTMLResponse:
    authorize_url = request.url_for("start_authorization")
    if link is not None:
        try:
            await _live_connect_session(runtime, link)
        except CallbackFailure as failure:
            return _error_page(request, failure)
        authorize_url = authorize_url.include_query_params(session=link)
    return _page(
        request,
        "connect.html",
        200,
        instance=runtime.settings.instance_host,
        authorize_url=str(authorize_url),
    )


async def _live_connect_session(runtime: RuntimeDep, token: str) -> ConnectSession:
    if len(token) > _MAX_PARAM:
        raise _bad("This connect link is unknown. Ask for a new one.")
    async with runtime.sessions() as db:
        found = await db.scalar(
            select(ConnectSession).where(ConnectSession.token_hash == connect_session_digest(token))
        )
    if found is None:
        raise _bad("This connect link is unknown. Ask for a new one.")
    if found.used_at is not None:
        raise _bad("This connect link was already used. Ask for a new one.")
    if found.expires_at <= now_utc():
        raise _bad("This connect link expired. Ask for a new one.")
    return found


@router.get(
    "/oauth/authorize",
    summary="Start the authorization: 302 to Workfront's authorize page",
    status_code=302,
    response_class=RedirectResponse,
    responses={
        302: {"description": "Redirect to Workfront; sets the attempt cookie"},
        400: {"description": "HTML page: the connect link is unknown, used or expired"},
    },
)
async def start_authorization(
    request: Request, runtime: RuntimeDep, link: SessionParam = None
) -> Response:
    settings = runtime.settings
    connect_session_id = None
    if link is not None:
        try:
            connect_session_id = (await _live_connect_session(runtime, link)).id
        except CallbackFailure as failure:
            return _error_page(request, failure)
    state = secrets.token_urlsafe(32)  # 256 bits
    browser = secrets.token_urlsafe(32)
    attempt_id = uuid.uuid4()
    verifier = secrets.token_urlsafe(48) if settings.pkce else None
    now = now_utc()
    async with runtime.sessions() as session, session.begin():
        # Opportunistic clean-up keeps the table small without a separate job.
        await session.execute(
            delete(Authorization).where(Authorization.expires_at < now - timedelta(days=1))
        )
        session.add(
            Authorization(
                id=attempt_id,
                state_hash=_digest(state),
                browser_hash=_digest(browser),
                code_verifier_enc=(
                    runtime.cipher.encrypt(
                        verifier, aad=row_aad("authorizations", attempt_id, "code_verifier")
                    )
                    if verifier
                    else None
                ),
                connect_session_id=connect_session_id,
                expires_at=now + ATTEMPT_TTL,
            )
        )
    location = runtime.workfront.authorize_url(
        state=state, code_challenge=pkce_challenge(verifier) if verifier else None
    )
    response = RedirectResponse(location, status_code=302, headers=_PAGE_HEADERS)
    response.set_cookie(
        ATTEMPT_COOKIE,
        browser,
        max_age=int(ATTEMPT_TTL.total_seconds()),
        path="/oauth",
        httponly=True,
        samesite="lax",
        secure=settings.cookie_secure,
    )
    return response


@router.get(
    "/oauth/callback",
    summary="Workfront redirects here with the authorization code",
    response_class=HTMLResponse,
    responses={
        302: {"description": "Connected through a connect link: on to its return_url"},
        400: {"description": "HTML page: the attempt was refused; nothing stored"},
        502: {"description": "HTML page: Workfront failed; nothing stored"},
    },
)
async def oauth_callback(
    request: Request,
    runtime: RuntimeDep,
    code: OptionalParam = None,
    state: OptionalParam = None,
    domain: OptionalParam = None,
    lane: OptionalParam = None,
    error: OptionalParam = None,
) -> Response:
    try:
        if any(len(value) > _MAX_PARAM for value in (code, state, domain, lane, error) if value):
            raise _bad("The callback's parameters are malformed.")
        connection_id, created, return_url = await _complete(
            request, runtime, code=code, state=state, domain=domain, lane=lane, error=error
        )
    except CallbackFailure as failure:
        log.info("callback refused: %s", failure.message)
        return _error_page(request, failure)
    response: Response
    if return_url is not None:
        target = httpx.URL(return_url).copy_merge_params(
            {"connection_id": str(connection_id), "status": "connected"}
        )
        response = RedirectResponse(str(target), status_code=302, headers=_PAGE_HEADERS)
    else:
        response = _page(request, "success.html", 200, connection_id=connection_id, created=created)
    response.delete_cookie(ATTEMPT_COOKIE, path="/oauth")
    return response


async def _complete(
    request: Request,
    runtime: RuntimeDep,
    *,
    code: str | None,
    state: str | None,
    domain: str | None,
    lane: str | None,
    error: str | None,
) -> tuple[uuid.UUID, bool, str | None]:
    settings = runtime.settings
    attempt = await _consume_attempt(request, runtime, state=state)
    if error is not None:
        reason = (
            "you declined access" if error == "access_denied" else "Workfront reported an error"
        )
        raise _bad(f"Workfront did not grant access: {reason}.", "Access was not granted")
    if not code:
        raise _bad("The callback carried no authorization code.")
    expected = settings.expected_domain_lane()
    if expected is not None and (domain, lane) != expected:
        raise _bad(
            "The callback names a different Workfront instance than the one this broker serves."
        )

    verifier = None
    if attempt.code_verifier_enc is not None:
        verifier = runtime.cipher.decrypt(
            attempt.code_verifier_enc, aad=row_aad("authorizations", attempt.id, "code_verifier")
        )
    workfront = runtime.workfront
    try:
        tokens = await workfront.exchange_code(code, code_verifier=verifier)
        user = await workfront.get_user(tokens.access_token)
    except ClientCredentialsRejected:
        raise CallbackFailure(
            502,
            "The broker is misconfigured",
            "Workfront refused this broker's app credentials. Nothing was stored; "
            "please tell the administrator.",
        ) from None
    except GrantRevokedError:
        raise _bad(
            "Workfront refused the authorization code: it expired (codes live two minutes) "
            "or was already used."
        ) from None
    except (TransientError, SessionRejectedError, WorkfrontError) as exc:
        log.warning("callback: Workfront failed: %s", exc.detail)
        raise CallbackFailure(
            502,
            "Workfront is not answering",
            "Workfront could not be reached or failed. "
            "Nothing was stored; please try again in a moment.",
        ) from None
    link = None
    if attempt.connect_session_id is not None:
        async with runtime.sessions() as db:
            link = await db.get(ConnectSession, attempt.connect_session_id)
        if link is None or link.used_at is not None:
            raise _bad("This connect link was already used. Ask for a new one.")
    try:
        connection_id, created = await runtime.broker.store_connection(
            user=user,
            tokens=tokens,
            external_ref=link.external_ref if link else None,
            connect_session_id=link.id if link else None,
        )
    except ConnectLinkSpent:
        raise _bad(
            "This connect link was already used or has expired. Ask for a new one."
        ) from None
    return connection_id, created, link.return_url if link else None


async def _consume_attempt(
    request: Request, runtime: RuntimeDep, *, state: str | None
) -> Authorization:
    """Find the attempt for this state and browser, and mark it used (single use)."""
    browser = request.cookies.get(ATTEMPT_COOKIE)
    now = now_utc()
    async with runtime.sessions() as session, session.begin():
        if state:
            attempt = await session.scalar(
                select(Authorization)
                .where(Authorization.state_hash == _digest(state))
                .with_for_update()
            )
            if attempt is None:
                raise _bad("This sign-in attempt is unknown. Please start again.")
        elif runtime.settings.require_state:
            raise _bad(
                "The callback carried no state, so it cannot be matched to a sign-in attempt."
            )
        else:
            # Cookie-only binding, for an instance shown not to echo state.
            if not browser:
                raise _bad("This browser has no sign-in attempt in progress.")
            attempt = await session.scalar(
                select(Authorization)
                .where(
                    Authorization.browser_hash == _digest(browser),
                    Authorization.used_at.is_(None),
                )
                .order_by(Authorization.created_at.desc())
                .limit(1)
                .with_for_update()
            )
            if attempt is None:
                raise _bad("This browser has no sign-in attempt in progress.")
        if attempt.used_at is not None:
            raise _bad("This sign-in attempt was already used. Please start again.")
        if attempt.expires_at <= now:
            raise _bad(
                "This sign-in attempt expired (attempts last 10 minutes). Please start again."
            )
        if not browser or not hmac.compare_digest(_digest(browser), attempt.browser_hash):
            raise _bad(
                "This sign-in attempt was started in another browser. "
                "Please start again in this one."
            )
        await session.execute(
            update(Authorization).where(Authorization.id == attempt.id).values(used_at=now)
        )
    return attempt
