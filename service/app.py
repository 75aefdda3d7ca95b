"""create_app(settings): routers, error handlers and the lifespan that owns resources."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute

from service.apikeys.clients import ClientCreate
from service.config import Settings
from service.runtime import open_runtime
from service.web import api_docs
from service.web.access_log import AccessLogMiddleware
from service.web.fastpath import TokenFastPath
from service.web.head import HeadAsGet
from service.web.pages import static_files
from service.web.problems import Problem, install_problem_handlers
from service.web.proxy_fastpath import ProxyFastPath
from service.web.routes import (
    clients,
    connect_sessions,
    connections,
    instances,
    oauth,
    ops,
    proxy,
    status,
)
from service.web.schemas import ConnectSessionCreate
from service.workers.running import Workers, start_workers

DESCRIPTION = """\
Owns a Workfront OAuth2 app, connects Workfront users through the
authorization-code flow, keeps their refresh tokens encrypted, and hands a
live Workfront `sessionID` to internal services.

Call `/v1` with `Authorization: Bearer <api key>`. Errors are RFC 9457
problem details (`application/problem+json`).
"""


def begin_shutdown(app: FastAPI) -> None:
    """Stop starting background work now: the first step of a graceful shutdown.

    Called on SIGTERM, before the server waits for requests in flight, so the
    refresher does not claim new work during that wait. Refreshes already
    running continue (they are shielded) and are settled by TokenIssuer.drain.
    """
    workers: Workers | None = getattr(app.state, "workers", None)
    if workers is not None:
        workers.stop_new_work()


def operation_id(route: APIRoute) -> str:
    """Short, stable operationIds for generated clients: ``<tag>-<handler>``,
    e.g. ``connections-get_token`` (FastAPI's default also spells out the path
    and the method)."""
    tag = str(route.tags[0]).replace(" ", "_") if route.tags else "broker"
    return f"{tag}-{route.name}"


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_runtime(settings) as runtime:
            app.state.runtime = runtime
            workers = start_workers(runtime)
            app.state.workers = workers
            # Everything made so far (modules, routes, SQLAlchemy metadata: most
            # of the heap) lives as long as the process: frozen, the collector's
            # full passes no longer walk it, and those were the longest pauses
            # a request could meet.
            gc.collect()
            gc.freeze()
            try:
                yield
            finally:
                await workers.stop()
                # A refresh in flight may hold a rotated token until it commits.
                await runtime.tokens.drain()

    app = FastAPI(
        generate_unique_id_function=operation_id,
        # Served by service.web.api_docs with their assets, not from a CDN.
        docs_url=None,
        redoc_url=None,
        # A trailing-slash redirect is built from the request's Host; such a
        # path answers 404 instead (links come from BROKER_PUBLIC_URL only).
        redirect_slashes=False,
        title="Workfront token broker",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    for module in (oauth, connections, proxy, connect_sessions, instances, clients, ops, status):
        app.include_router(module.router)
    # The pages' stylesheet and icon, served by the broker itself so the pages
    # load nothing from a third party; a mount stays out of the OpenAPI document.
    app.mount("/static", static_files(), name="static")
    app.include_router(api_docs.router)
    app.mount(api_docs.ASSETS_PATH, api_docs.assets(), name="docs-assets")

    # Inside the access log (added later = outer), so its answers are logged too.
    app.add_middleware(TokenFastPath)
    app.add_middleware(ProxyFastPath)
    # Outside the fast path (a HEAD of the token is answered like its GET),
    # inside the access log (which records HEAD as HEAD).
    app.add_middleware(HeadAsGet)
    app.add_middleware(AccessLogMiddleware)

    _register_problem_schema(app)
    return app


def _register_problem_schema(app: FastAPI) -> None:
    """Make sure the Problem schema is in components even if no route returns it directly."""
    original = app.openapi

    def openapi() -> dict[str, object]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        # Bodies parsed by service.web.deps.json_body are referenced, not inferred.
        for model in (Problem, ClientCreate, ConnectSessionCreate):
            schemas[model.__name__] = model.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
