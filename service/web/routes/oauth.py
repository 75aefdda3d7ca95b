"""The browser flow: /connect, /oauth/authorize, /oauth/callback.

The ``state`` is single-use, stored only as a SHA-256 hash with a 10-minute
expiry, and bound to the browser that started the attempt by an HttpOnly,
SameSite=Lax cookie (also stored hashed). Every failure renders an HTML page
that says what happened and what to do next, offers a way to start again and
stores nothing. The code and the client secret only ever go to the configured
instance, never to a host derived from the callback's ``domain``/``lane``.

A connect link (``/connect/<token>``, or ``/connect?session=<token>``) starts
the same flow; its token also travels in a second cookie for the length of the attempt, so that an
error page can offer the same link again while it is still usable.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

import httpx
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import delete, select, update

from service.clock import now_utc
from service.crypto import row_aad
from service.db.models import Authorization, ConnectSession
from service.runtime import Runtime
from service.signin.links import ConnectLinkSpent
from service.web.deps import RuntimeDep
from service.web.pages import not_found, page_headers, render
from service.web.routes.connect_sessions import connect_session_digest
from service.workfront import (
    ClientCredentialsRejected,
    GrantRevokedError,
    SessionRejectedError,
    TransientError,
    WorkfrontError,
    pkce_challenge,
)

router = APIRouter(tags=["browser flow"])
log = logging.getLogger("service.routes.oauth")  # pinned: operators filter on it

ATTEMPT_COOKIE = "wtb_attempt"
_BROWSER_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
LINK_COOKIE = "wtb_link"
ATTEMPT_TTL = timedelta(minutes=10)
_COOKIE_PATH = "/oauth"
_MAX_PARAM = 2048
ASK_FOR_NEW_LINK = (
    "Go back to the application that sent you here and ask it for a new connect link."
)


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


class CallbackFailure(Exception):
    """Why a browser step was refused, in words for the person in front of it.

    ``retryable`` False means starting the same flow again cannot help (the
    connect link is spent): the page then tells them to ask for a new link.
    """

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        message: str,
        next_step: str,
        *,
        retryable: bool = True,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.title = title
        self.message = message
        self.next_step = next_step
        self.retryable = retryable
        # Filled in once the attempt is known: whether it came from a connect link.
        self.attempt_known = False
        self.link_id: uuid.UUID | None = None


_START_AGAIN = "Press Try again to start over. It takes less than a minute."


def _attempt_failure(code: str, message: str, next_step: str = _START_AGAIN) -> CallbackFailure:
    return CallbackFailure(400, code, "The sign-in could not be finished", message, next_step)


def _link_failure(code: str, message: str, next_step: str = ASK_FOR_NEW_LINK) -> CallbackFailure:
    return CallbackFailure(
        400, code, "This connect link cannot be used", message, next_step, retryable=False
    )


_LINK_UNKNOWN = (
    "link_unknown",
    "This connect link is unknown. It may have been copied incompletely.",
)
_LINK_USED = (
    "link_used",
    "This connect link was already used. Each link connects one account, once.",
    "If you connected with it a moment ago, you are done: go back to the application. "
    "Otherwise ask the application for a new connect link.",
)
_LINK_EXPIRED = (
    "link_expired",
    "This connect link expired. Links work for a limited time after the application makes them.",
)


@dataclass(frozen=True)
class _Retry:
    url: str | None  # "Try again" goes here; None: no button
    app_url: str | None  # the application's return_url, when the link is known


async def _retry_for(request: Request, runtime: Runtime, failure: CallbackFailure) -> _Retry:
    """The right place to start again: the same connect link while it still
    works, else the operator page when it is on, else nowhere (ask the app)."""
    link: ConnectSession | None = None
    token = (
        request.cookies.get(LINK_COOKIE)
        or request.path_params.get("token")
        or request.query_params.get("session")
    )
    if token is not None and len(token) > _MAX_PARAM:
        token = None
    async with runtime.sessions() as db:
        if token is not None:
            link = await db.scalar(
                select(ConnectSession).where(
                    ConnectSession.token_hash == connect_session_digest(token)
                )
            )
        if failure.attempt_known and (link is None or link.id != failure.link_id):
            # The cookie (if any) belongs to another flow: trust the attempt.
            token = None
            link = None
            if failure.link_id is not None:
                link = await db.get(ConnectSession, failure.link_id)
    if link is not None:
        live = link.used_at is None and link.expires_at > now_utc()
        if live and token is not None and failure.retryable:
            url = request.url_for("connect_link_page", token=token)
            return _Retry(str(url), link.return_url)
        return _Retry(None, link.return_url)
    if runtime.settings.connect_page_enabled and failure.retryable:
        return _Retry(str(request.url_for("connect_page")), None)
    return _Retry(None, None)


async def _error_page(
    request: Request, runtime: Runtime, failure: CallbackFailure, *, nothing_stored: bool = False
) -> HTMLResponse:
    retry = await _retry_for(request, runtime, failure)
    next_step = failure.next_step
    # Advice to "press Try again" needs the button; without one the only way
    # forward is a new link (no link can fix the broker's own credentials).
    if retry.url is None and failure.retryable and failure.code != "credentials_rejected":
        next_step = ASK_FOR_NEW_LINK
    response = render(
        request,
        runtime.settings,
        "error.html",
        failure.status,
        title=failure.title,
        message=failure.message,
        next_step=next_step,
        code=failure.code,
        retry_url=retry.url,
        app_url=retry.app_url,
        nothing_stored=nothing_stored,
    )
    _forget_link(response)
    return response


def _forget_link(response: Response) -> None:
    # Not the attempt cookie: other tabs' attempts still need it. It expires
    # with them, and it matches only states that are single use anyway.
    response.delete_cookie(LINK_COOKIE, path=_COOKIE_PATH)


# Lengths are checked by the handlers, so an oversized value gets the HTML
# error page a browser user can act on, not a JSON validation error.
OptionalParam = Annotated[str | None, Query()]
SessionParam = Annotated[
    str | None,
    Query(alias="session", description="A connect-session token from POST /v1/connect-sessions."),
]


def _readable(moment: datetime) -> str:
    return moment.strftime("%H:%M UTC on %d %b %Y")


@router.get(
    "/connect",
    summary="Page with a 'Connect Workfront' button",
    response_class=HTMLResponse,
    responses={
        400: {"description": "HTML page: the connect link is unknown, used or expired"},
        404: {"description": "HTML page: no link given and the operator page is turned off"},
    },
)
async def connect_page(
    request: Request, runtime: RuntimeDep, link: SessionParam = None
) -> HTMLResponse:
    settings = runtime.settings
    authorize_url = request.url_for("start_authorization")
    expires_at = None
    if link is None:
        if not settings.connect_page_enabled:
            return not_found(request, settings)
    else:
        try:
            found = await _live_connect_session(link, runtime)
        except CallbackFailure as failure:
            return await _error_page(request, runtime, failure)
        authorize_url = authorize_url.include_query_params(session=link)
        expires_at = _readable(found.expires_at)
    return render(
        request,
        settings,
        "connect.html",
        200,
        instance=settings.instance_host,
        authorize_url=str(authorize_url),
        for_app=link is not None,
        expires_at=expires_at,
    )


@router.get(
    "/connect/{token}",
    summary="A connect link: the page one person opens (from POST /v1/connect-sessions)",
    response_class=HTMLResponse,
    responses={400: {"description": "HTML page: the connect link is unknown, used or expired"}},
)
async def connect_link_page(request: Request, runtime: RuntimeDep, token: str) -> HTMLResponse:
    # The same page as /connect?session=<token>, the form links had before;
    # both keep working. Logs name this route by its template only.
    return await connect_page(request, runtime, link=token)


async def _live_connect_session(token: str, runtime: Runtime) -> ConnectSession:
    if len(token) > _MAX_PARAM:
        raise _link_failure(*_LINK_UNKNOWN)
    async with runtime.sessions() as db:
        found = await db.scalar(
            select(ConnectSession).where(ConnectSession.token_hash == connect_session_digest(token))
        )
    if found is None:
        raise _link_failure(*_LINK_UNKNOWN)
    if found.used_at is not None:
        raise _link_failure(*_LINK_USED)
    if found.expires_at <= now_utc():
        raise _link_failure(*_LINK_EXPIRED)
    return found


@router.get(
    "/oauth/authorize",
    summary="Start the authorization: 302 to Workfront's authorize page",
    status_code=302,
    response_class=RedirectResponse,
    responses={
        302: {"description": "Redirect to Workfront; sets the attempt cookie"},
        400: {"description": "HTML page: the connect link is unknown, used or expired"},
        404: {"description": "HTML page: no link given and the operator page is turned off"},
    },
)
async def start_authorization(
    request: Request, runtime: RuntimeDep, link: SessionParam = None
) -> Response:
    settings = runtime.settings
    connect_session_id = None
    if link is None:
        if not settings.connect_page_enabled:
            return not_found(request, settings)
    else:
        try:
            connect_session_id = (await _live_connect_session(link, runtime)).id
        except CallbackFailure as failure:
            return await _error_page(request, runtime, failure)
    state = secrets.token_urlsafe(32)  # 256 bits
    # One binding secret per browser, shared by every attempt it starts: a
    # second tab must not orphan the first one's attempt. Only a value of the
    # shape this code makes is kept.
    browser = request.cookies.get(ATTEMPT_COOKIE) or ""
    if not _BROWSER_SECRET.fullmatch(browser):
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
    response = RedirectResponse(location, status_code=302, headers=page_headers(settings))
    for name, value in ((ATTEMPT_COOKIE, browser), (LINK_COOKIE, link)):
        if value is None:
            response.delete_cookie(name, path=_COOKIE_PATH)
            continue
        response.set_cookie(
            name,
            value,
            max_age=int(ATTEMPT_TTL.total_seconds()),
            path=_COOKIE_PATH,
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
            raise _attempt_failure(
                "malformed_callback", "The address Workfront sent you back to is malformed."
            )
        connection_id, created, return_url = await _complete(
            request, runtime, code=code, state=state, domain=domain, lane=lane, error=error
        )
    except CallbackFailure as failure:
        log.info("callback refused: %s", failure.code)
        return await _error_page(request, runtime, failure, nothing_stored=True)
    response: Response
    if return_url is not None:
        target = httpx.URL(return_url).copy_merge_params(
            {"connection_id": str(connection_id), "status": "connected"}
        )
        response = RedirectResponse(
            str(target), status_code=302, headers=page_headers(runtime.settings)
        )
    else:
        response = render(
            request,
            runtime.settings,
            "success.html",
            200,
            connection_id=connection_id,
            created=created,
        )
    _forget_link(response)
    return response


async def _complete(
    request: Request,
    runtime: Runtime,
    *,
    code: str | None,
    state: str | None,
    domain: str | None,
    lane: str | None,
    error: str | None,
) -> tuple[uuid.UUID, bool, str | None]:
    attempt = await _consume_attempt(request, runtime, state=state)
    try:
        return await _finish(runtime, attempt, code=code, domain=domain, lane=lane, error=error)
    except CallbackFailure as failure:
        failure.attempt_known = True
        failure.link_id = attempt.connect_session_id
        raise


async def _finish(
    runtime: Runtime,
    attempt: Authorization,
    *,
    code: str | None,
    domain: str | None,
    lane: str | None,
    error: str | None,
) -> tuple[uuid.UUID, bool, str | None]:
    settings = runtime.settings
    if error is not None:
        if error == "access_denied":
            raise CallbackFailure(
                400,
                "access_denied",
                "Access was not granted",
                "You declined access on the Workfront page, so nothing was connected.",
                "If you meant to connect, press Try again and choose Allow on the Workfront page.",
            )
        raise CallbackFailure(
            400,
            "workfront_error",
            "Access was not granted",
            "Workfront did not grant access: it reported an error while you were signing in.",
            _START_AGAIN,
        )
    if not code:
        raise _attempt_failure("no_code", "Workfront sent you back without an authorization code.")
    expected = settings.expected_domain_lane()
    if expected is not None and (domain, lane) != expected:
        raise CallbackFailure(
            400,
            "wrong_instance",
            "That was a different Workfront instance",
            "The sign-in came back from a different Workfront instance than the one "
            f"this broker serves ({settings.instance_host}).",
            f"Press Try again and sign in at {settings.instance_host}.",
        )
    link = None
    if attempt.connect_session_id is not None:
        # Checked before the code is exchanged, so a spent link never makes a grant.
        async with runtime.sessions() as db:
            link = await db.get(ConnectSession, attempt.connect_session_id)
        if link is None or link.used_at is not None:
            raise _link_failure(*_LINK_USED)
        if link.expires_at <= now_utc():
            raise _link_failure(*_LINK_EXPIRED)

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
            "credentials_rejected",
            "The broker is misconfigured",
            "Workfront refused this broker's app credentials, so your account could not "
            "be connected.",
            "Tell the administrator of this broker. Trying again will not help until they fix it.",
        ) from None
    except GrantRevokedError:
        raise CallbackFailure(
            400,
            "code_refused",
            "The sign-in took too long",
            "Workfront refused the authorization code: it expired (codes live two minutes) "
            "or was already used.",
            "Press Try again and finish signing in within two minutes.",
        ) from None
    except (TransientError, SessionRejectedError, WorkfrontError) as exc:
        log.warning("callback: Workfront failed: %s", exc.detail)
        raise CallbackFailure(
            502,
            "workfront_unreachable",
            "Workfront is not answering",
            "Workfront could not be reached or failed while connecting your account.",
            "Wait a minute, then press Try again. If it keeps happening, tell your "
            "Workfront administrator.",
        ) from None
    try:
        connection_id, created = await runtime.connections.store_connection(
            user=user,
            tokens=tokens,
            external_ref=link.external_ref if link else None,
            connect_session_id=link.id if link else None,
        )
    except ConnectLinkSpent:
        raise _link_failure(
            "link_used",
            "This connect link was used in another window at the same moment, or it expired.",
        ) from None
    return connection_id, created, link.return_url if link else None


async def _consume_attempt(
    request: Request, runtime: Runtime, *, state: str | None
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
                raise _attempt_failure(
                    "state_unknown",
                    "This sign-in attempt is unknown to the broker, so it cannot be finished.",
                )
        elif runtime.settings.require_state:
            raise _attempt_failure(
                "state_missing",
                "Workfront sent you back with no state, so it cannot be matched to a "
                "sign-in attempt.",
            )
        else:
            # Cookie-only binding, for an instance shown not to echo state.
            if not browser:
                raise _attempt_failure(
                    "no_attempt", "This browser has no sign-in attempt in progress."
                )
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
                raise _attempt_failure(
                    "no_attempt", "This browser has no sign-in attempt in progress."
                )
        if attempt.used_at is not None:
            raise _attempt_failure(
                "state_used",
                "This sign-in attempt was already used (perhaps the page was reloaded or "
                "opened twice).",
            )
        if attempt.expires_at <= now:
            raise _attempt_failure(
                "state_expired",
                "This sign-in attempt expired: a sign-in must be finished within 10 minutes.",
            )
        if not browser or not hmac.compare_digest(_digest(browser), attempt.browser_hash):
            raise _attempt_failure(
                "other_browser",
                "This sign-in attempt was started in another browser, so this one cannot "
                "finish it.",
                "Press Try again to start over in this browser.",
            )
        await session.execute(
            update(Authorization).where(Authorization.id == attempt.id).values(used_at=now)
        )
    return attempt
