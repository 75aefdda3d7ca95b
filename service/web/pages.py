"""HTML pages a person sees: templates, security headers, the stylesheet.

Every page the broker renders goes through ``render`` so each carries the
same strict headers: a Content-Security-Policy that allows only our own
stylesheet and images (no script at all, no inline style), no framing, no
MIME sniffing, no caching and no referrer (a callback URL carries the code,
a connect-link URL its token).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context
from starlette.responses import Response
from starlette.types import Scope

from service.config import Settings

_PACKAGE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(_PACKAGE / "templates"))
STATIC_DIR = _PACKAGE / "static"


def public_link(request: Request, settings: Settings, name: str, /, **params: str) -> str:
    """An absolute URL of one of the broker's routes on its configured public
    origin (BROKER_PUBLIC_URL): never built from the request's Host header."""
    return settings.public_base_url + str(request.app.url_path_for(name, **params))


@pass_context
def _template_url_for(context: dict[str, Any], name: str, /, **params: str) -> str:
    """``url_for`` in templates (the stylesheet, the icon), on the public origin."""
    return public_link(context["request"], context["settings"], name, **params)


# Starlette's own url_for builds the URL from the request's Host.
templates.env.globals["url_for"] = _template_url_for


def content_security_policy(settings: Settings) -> str:
    origins = []
    for instance in settings.instances.values():
        parts = urlsplit(instance.workfront_url)
        origins.append(f"{parts.scheme}://{parts.netloc}")
    workfront_origin = " ".join(dict.fromkeys(origins))
    return "; ".join(
        (
            "default-src 'none'",
            "style-src 'self'",
            "img-src 'self'",
            # No page has a form today; if one is added it may post only to us
            # or to the instance's authorize page.
            f"form-action 'self' {workfront_origin}",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        )
    )


def page_headers(settings: Settings) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(settings),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def render(
    request: Request, settings: Settings, name: str, status: int, **context: object
) -> HTMLResponse:
    response = templates.TemplateResponse(
        request, name, {**context, "settings": settings}, status_code=status
    )
    response.headers.update(page_headers(settings))
    return response


def not_found(request: Request, settings: Settings) -> HTMLResponse:
    """A switched-off page answers like a page that does not exist."""
    return render(
        request,
        settings,
        "error.html",
        404,
        title="Page not found",
        message="There is no page at this address.",
        next_step=(
            "To connect your Workfront account, open the connect link that the "
            "application you use gave you."
        ),
        code="not_found",
        retry_url=None,
        app_url=None,
    )


class BrokerStatic(StaticFiles):
    """Our stylesheet and icon. nosniff here too: a stylesheet is only ever CSS."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers.setdefault("Cache-Control", "public, max-age=3600")
        return response


def static_files() -> BrokerStatic:
    return BrokerStatic(directory=str(STATIC_DIR))
