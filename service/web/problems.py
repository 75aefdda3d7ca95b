"""RFC 9457 problem details: every API error leaves through here."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from service.db.errors import DATABASE_ERROR_CLASSES, is_database_outage, sqlstate

log = logging.getLogger("service.problems")  # pinned: operators filter on it

PROBLEM_MEDIA_TYPE = "application/problem+json"
_TYPE_PREFIX = "urn:workfront-token-broker:problem:"

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    422: "Unprocessable content",
    500: "Internal server error",
    503: "Service unavailable",
}


class Problem(BaseModel):
    """The body of every error answer of the internal API."""

    type: str
    title: str
    status: int
    detail: str | None = None


class ProblemError(Exception):
    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra or {}


def problem_response(
    status: int,
    slug: str,
    detail: str | None,
    *,
    headers: Mapping[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": _TYPE_PREFIX + slug,
        "title": _TITLES.get(status, "Error"),
        "status": status,
    }
    if detail:
        body["detail"] = detail
    body.update(extra or {})
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


_HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _allowed_methods(request: Request) -> str:
    """Every method the API serves at this path, for the Allow header of a 405.

    Starlette names only the methods of the first route whose path matches,
    but each method of a path is its own route here (GET and DELETE of
    /v1/connections/{id}). The OpenAPI document lists them all; the index is
    built from it once.
    """
    state = request.app.state
    index: list[tuple[re.Pattern[str], set[str]]] | None = getattr(state, "method_index", None)
    if index is None:
        index = [
            (compile_path(path)[0], {method.upper() for method in item if method in _HTTP_METHODS})
            for path, item in request.app.openapi()["paths"].items()
        ]
        state.method_index = index
    methods: set[str] = set()
    for pattern, served in index:
        if pattern.match(request.scope["path"]):
            methods |= served
    if "GET" in methods:
        methods.add("HEAD")  # answered wherever GET is (service.web.head)
    return ", ".join(sorted(methods))


_SCHEMA_MISSING_SQLSTATES = ("42P01", "3F000")  # undefined table, undefined schema


def unexpected_error_response(exc: Exception) -> JSONResponse:
    """The answer to an error no handler expected: 503 for a database outage
    or a schema not migrated yet, else 500."""
    if sqlstate(exc) in _SCHEMA_MISSING_SQLSTATES:
        # Not migrated (yet): the deployment's state, not a bug; /readyz says the same.
        log.error("database schema missing: run `python -m service migrate`")
        return problem_response(
            503,
            "schema-missing",
            "the broker's database schema is missing or behind; try again shortly",
            headers={"Retry-After": "5"},
        )
    if is_database_outage(exc):
        # PostgreSQL unreachable is an outage, not a client error and not a
        # reason to tell a caller its key is unknown: 503, try again shortly.
        log.warning("database unavailable: %s", type(exc).__name__)
        return problem_response(
            503,
            "database-unavailable",
            "the broker's database is unreachable; try again shortly",
            headers={"Retry-After": "5"},
        )
    log.error("unexpected error", exc_info=exc)
    return problem_response(500, "internal-error", "an unexpected error occurred")


ResponsesDoc = dict[int | str, dict[str, Any]]


def problem_doc(status: int, description: str) -> dict[str, Any]:
    """An OpenAPI ``responses`` entry for a problem answer."""
    return {
        "model": Problem,
        "description": description,
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def auth_errors(*, lacks: str = "the scope", bad_input: str = "Bad input.") -> ResponsesDoc:
    """The 401, 403 and 422 answers every ``/v1`` operation documents."""
    return {
        401: problem_doc(401, "No API key, or an unknown one."),
        403: problem_doc(403, f"The API key lacks {lacks}."),
        422: problem_doc(422, bad_input),
    }


_SLUGS = {404: "not-found", 405: "method-not-allowed", 401: "unauthorized"}


_PAGE_PREFIXES = ("/connect", "/oauth/", "/status")


def _page_for(request: Request, status: int) -> Response:
    from service.web.pages import render  # pages import config, not this module's users

    unavailable = status == 503
    response = render(
        request,
        request.app.state.runtime.settings,
        "error.html",
        status,
        title="The broker is unavailable" if unavailable else "Something went wrong",
        message=(
            "The broker cannot reach its database right now."
            if unavailable
            else "The broker met an unexpected error."
        ),
        next_step="Wait a minute, then reload this page or start again."
        if unavailable
        else "Start again; if it happens again, tell the team that runs the broker.",
        code="unavailable" if unavailable else "internal_error",
        retry_url=None,
        app_url=None,
        nothing_stored=unavailable,
    )
    if unavailable:
        response.headers["Retry-After"] = "5"
    return response


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(_: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            exc.status, exc.slug, exc.detail, headers=exc.headers, extra=exc.extra
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Only where and what: never echo the input, it may hold a secret.
        errors = [
            {"loc": [str(part) for part in error.get("loc", ())], "msg": error.get("msg", "")}
            for error in exc.errors()
        ]
        return problem_response(
            422, "invalid-request", "the request is not valid", extra={"errors": errors}
        )

    async def _unexpected(request: Request, exc: Exception) -> Response:
        answer = unexpected_error_response(exc)
        if request.url.path.startswith(_PAGE_PREFIXES) and hasattr(request.app.state, "runtime"):
            # A person's browser: the same status as a page, not JSON.
            return _page_for(request, answer.status_code)
        return answer

    # Registered for the broad classes: Starlette picks the most specific
    # handler, and these run before the server's bare 500.
    for error_class in (*DATABASE_ERROR_CLASSES, Exception):
        app.add_exception_handler(error_class, _unexpected)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's "error parsing the body" (e.g. not UTF-8): bad input, like
            # any other body that does not validate.
            return problem_response(422, "invalid-request", "the request body cannot be parsed")
        slug = _SLUGS.get(exc.status_code, "http-error")
        detail = exc.detail if isinstance(exc.detail, str) else None
        headers = exc.headers
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": _allowed_methods(request)}
        return problem_response(exc.status_code, slug, detail, headers=headers)
