"""The API's reference pages, /docs (Swagger UI) and /redoc, served with every
asset from the broker itself: operators read them inside networks that reach
no CDN. The assets come from the ``fastapi-offline`` wheel (Swagger UI and
ReDoc's distribution files, kept current by its maintainer), the page shells
and Swagger UI's start-up script from here.

The pages carry the broker's security headers with a policy of their own:
scripts only from the broker (no inline script), requests only to the broker
(Swagger UI's "Try it out"), no framing. ReDoc styles itself with inline
``<style>`` elements, hence ``style-src 'unsafe-inline'``; and its search runs
in a ``blob:`` worker.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
ASSETS_PATH = "/docs-assets"

_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "worker-src blob:",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    )
)
_HEADERS = {
    "Content-Security-Policy": _POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_SWAGGER = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Workfront token broker: API</title>
<link rel="stylesheet" href="{ASSETS_PATH}/swagger-ui.css">
<link rel="icon" href="/static/favicon.svg">
</head><body><div id="swagger-ui"></div>
<script src="{ASSETS_PATH}/swagger-ui-bundle.js"></script>
<script src="/static/swagger-init.js"></script>
</body></html>
"""

_REDOC = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Workfront token broker: API</title>
<link rel="icon" href="/static/favicon.svg">
</head><body><redoc spec-url="/openapi.json"></redoc>
<script src="{ASSETS_PATH}/redoc.standalone.js"></script>
</body></html>
"""

router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return HTMLResponse(_SWAGGER, headers=_HEADERS)


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    return HTMLResponse(_REDOC, headers=_HEADERS)


def assets() -> StaticFiles:
    return StaticFiles(directory=str(ASSETS))
