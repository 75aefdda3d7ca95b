"""Operations endpoints: liveness, readiness, metrics. No API key."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from service.connections.stored_keys import missing_keys_problem
from service.db.errors import sqlstate
from service.web.deps import RuntimeDep

router = APIRouter(tags=["operations"])
log = logging.getLogger("service.routes.ops")  # pinned: operators filter on it


@router.get("/healthz", summary="The process lives")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Database reachable and schema at the newest revision",
    responses={503: {"description": "Not ready: database unreachable or schema behind"}},
)
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    try:
        async with runtime.engine.connect() as conn:
            revision = await conn.scalar(text("SELECT version_num FROM alembic_version"))
            if revision != runtime.schema_head:
                return JSONResponse(
                    {"status": "unavailable", "reason": "schema behind"}, status_code=503
                )
            missing = await runtime.stored_keys.missing(conn)
    except (SQLAlchemyError, OSError) as exc:
        # The SQLSTATE tells "too many connections" from "server gone" without
        # printing the driver's message (which can quote statement values).
        state = sqlstate(exc) or None
        log.warning("readiness: database check failed (%s %s)", type(exc).__name__, state)
        return JSONResponse({"status": "unavailable", "reason": "database"}, status_code=503)
    if missing:
        log.error("readiness: %s", missing_keys_problem(missing))
        return JSONResponse(
            {"status": "unavailable", "reason": "encryption key missing", "key_ids": missing},
            status_code=503,
        )
    return JSONResponse({"status": "ok", "schema": revision})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
