"""The browser flow's HTTP side: /connect, /oauth/authorize, /oauth/callback.

The sign-in itself lives in service.signin: attempts (state, binding
cookie, PKCE), connect links, the callback's steps and the wording of each
refusal. These handlers read the request, call it, and answer with a page or
a redirect. Every failure renders an HTML page that says what happened and
what to do next, offers a way to start again and stores nothing.

Two cookies, both HttpOnly and SameSite=Lax, scoped to /oauth, living as long
as an attempt: the browser's binding secret, and the connect link's token
(``/connect/<token>``, or ``/connect?session=<token>``), so that an error page
can offer the same link again while it is still usable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

import httpx
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import URL

from service.clock import now_utc
from service.runtime import Runtime
from service.signin.attempts import start_attempt
from service.signin.callback import finish_signin
from service.signin.failures import CallbackFailure, next_step_without_retry, refusal
from service.signin.links import (
    LONGEST_TOKEN,
    LinkState,
    link_of_failure,
    link_state,
    live_connect_link,
)
from service.web.deps import RuntimeDep
from service.web.pages import not_found, page_headers, public_link, render

router = APIRouter(tags=["browser flow"])
log = logging.getLogger("service.routes.oauth")  # pinned: operators filter on it

ATTEMPT_COOKIE = "wtb_attempt"
LINK_COOKIE = "wtb_link"
# The latest state, for cookie-only binding (BROKER_REQUIRE_STATE=false) only.
STATE_COOKIE = "wtb_state"
_COOKIE_PATH = "/oauth"


@dataclass(frozen=True)
class _Retry:
    url: str | None  # "Try again" goes here; None: no button
    app_url: str | None  # the application's return_url, when the link is known


async def _retry_for(request: Request, runtime: Runtime, failure: CallbackFailure) -> _Retry:
    """The right place to start again: the same connect link while it still
    works, else the operator page when it is on, else nowhere (ask the app)."""
    token = (
        request.cookies.get(LINK_COOKIE)
        or request.path_params.get("token")
        or request.query_params.get("session")
    )
    link, token = await link_of_failure(runtime.database, token, failure)
    if link is not None:
        live = link_state(link, now=now_utc()) is LinkState.LIVE
        if live and token is not None and failure.retryable:
            url = public_link(request, runtime.settings, "connect_link_page", token=token)
            return _Retry(url, link.return_url)
        return _Retry(None, link.return_url)
    if runtime.settings.connect_page_enabled and failure.retryable:
        return _Retry(public_link(request, runtime.settings, "connect_page"), None)
    return _Retry(None, None)


async def _error_page(
    request: Request, runtime: Runtime, failure: CallbackFailure, *, nothing_stored: bool = False
) -> HTMLResponse:
    retry = await _retry_for(request, runtime, failure)
    response = render(
        request,
        runtime.settings,
        "error.html",
        failure.status,
        title=failure.title,
        message=failure.message,
        next_step=failure.next_step if retry.url is not None else next_step_without_retry(failure),
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


# Not bounded here either: an unknown name (a long one too) gets the HTML 404 page.
InstanceParam = Annotated[
    str | None,
    Query(
        description="The Workfront instance to connect to (GET /v1/instances); when several"
        " are configured and none is named, /connect offers the choice.",
    ),
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
    request: Request,
    runtime: RuntimeDep,
    link: SessionParam = None,
    instance: InstanceParam = None,
) -> HTMLResponse:
    settings = runtime.settings
    authorize_url = URL(public_link(request, settings, "start_authorization"))
    expires_at = None
    if link is None:
        if not settings.connect_page_enabled:
            return not_found(request, settings)
        if instance is None and settings.instances.only is None:
            # Several instances: the person picks one.
            choices = [
                (name, chosen.host, str(authorize_url.include_query_params(instance=name)))
                for name, chosen in settings.instances.items()
            ]
            return render(request, settings, "connect.html", 200, choices=choices, for_app=False)
        named = settings.instances.only if instance is None else settings.instances.get(instance)
        if named is None:
            return not_found(request, settings)
        if instance is not None:
            authorize_url = authorize_url.include_query_params(instance=named.name)
    else:
        try:
            found = await live_connect_link(runtime.database, link)
        except CallbackFailure as failure:
            return await _error_page(request, runtime, failure)
        named = settings.instances.get(found.instance)
        if named is None:
            return not_found(request, settings)
        authorize_url = authorize_url.include_query_params(session=link)
        expires_at = _readable(found.expires_at)
    return render(
        request,
        settings,
        "connect.html",
        200,
        instance=named.host,
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
    request: Request,
    runtime: RuntimeDep,
    link: SessionParam = None,
    instance: InstanceParam = None,
) -> Response:
    settings = runtime.settings
    link_id = None
    if link is None:
        if not settings.connect_page_enabled:
            return not_found(request, settings)
        if instance is None and settings.instances.only is None:
            # Several instances and none named: the page that offers the choice.
            return RedirectResponse(
                public_link(request, settings, "connect_page"),
                status_code=302,
                headers=page_headers(settings),
            )
        named = settings.instances.only if instance is None else settings.instances.get(instance)
    else:
        try:
            found = await live_connect_link(runtime.database, link)
        except CallbackFailure as failure:
            return await _error_page(request, runtime, failure)
        link_id, named = found.id, settings.instances.get(found.instance)
    if named is None:
        return not_found(request, settings)
    started = start_attempt(
        runtime,
        browser_cookie=request.cookies.get(ATTEMPT_COOKIE),
        link_id=link_id,
        instance=named.name,
    )
    response = RedirectResponse(
        started.authorize_url, status_code=302, headers=page_headers(settings)
    )
    latest = None if settings.require_state else started.state
    for name, value in (
        (ATTEMPT_COOKIE, started.browser),
        (LINK_COOKIE, link),
        (STATE_COOKIE, latest),
    ):
        if value is None:
            response.delete_cookie(name, path=_COOKIE_PATH)
            continue
        response.set_cookie(
            name,
            value,
            max_age=settings.signin_ttl_seconds,
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
        if any(len(value) > LONGEST_TOKEN for value in (code, state, domain, lane, error) if value):
            raise refusal("malformed_callback")
        connected = await finish_signin(
            runtime,
            browser=request.cookies.get(ATTEMPT_COOKIE),
            latest_state=request.cookies.get(STATE_COOKIE),
            code=code,
            state=state,
            domain=domain,
            lane=lane,
            error=error,
        )
    except CallbackFailure as failure:
        log.info("callback refused: %s", failure.code)
        return await _error_page(request, runtime, failure, nothing_stored=True)
    response: Response
    if connected.return_url is not None:
        target = httpx.URL(connected.return_url).copy_merge_params(
            {"connection_id": str(connected.connection_id), "status": "connected"}
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
            connection_id=connected.connection_id,
            created=connected.created,
        )
    _forget_link(response)
    return response
