"""The emulator's HTML: the sign-in and consent page, and the refusal page.

Any user name and password sign in; the page says so. The form carries the
authorize parameters from the GET to the POST in hidden fields, every value
HTML-escaped.
"""

from __future__ import annotations

import html
from collections.abc import Mapping

from fastapi.responses import HTMLResponse

from service.workfront.protocol import AUTHORIZE_PATH

_STYLE = (
    "body{font-family:system-ui,sans-serif;background:#2c2c2c;color:#222;margin:0}"
    "main{max-width:26rem;margin:4rem auto;background:#fff;border-radius:8px;padding:2rem}"
    "h1{font-size:1.25rem;margin-top:0}label{display:block;margin:.8rem 0}"
    "input{display:block;width:100%;padding:.5rem;margin-top:.3rem;box-sizing:border-box}"
    "button{padding:.6rem 1.2rem;margin:.8rem .5rem 0 0;border-radius:5px;border:0;"
    "font-weight:600;cursor:pointer}button[value=allow]{background:#1473e6;color:#fff}"
    ".hint{color:#666;font-size:.85rem}"
)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><main><h1>{html.escape(title)}</h1>{body}"
        "</main></body></html>"
    )
    return HTMLResponse(doc, status, headers={"Cache-Control": "no-store"})


def refused(problem: str) -> HTMLResponse:
    """An authorize request refused: shown, never redirected back (RFC 6749 §4.1.2.1)."""
    return _page("Authorization request refused", f"<p>{html.escape(problem)}</p>", 400)


# Authorize parameters the login form carries from the GET to the POST in hidden fields.
_CARRIED = "client_id redirect_uri response_type state code_challenge code_challenge_method".split()


def login_form(p: Mapping[str, str], error: str | None = None, status: int = 200) -> HTMLResponse:
    hidden = "".join(
        f'<input type="hidden" name="{k}" value="{html.escape(p[k])}">' for k in _CARRIED if k in p
    )
    note = f"<p role='alert'>{html.escape(error)}</p>" if error else ""
    form = (
        f'{note}<form method="post" action="{AUTHORIZE_PATH}">{hidden}'
        '<label>Username <input name="username" autocomplete="username"></label>'
        '<label>Password <input name="password" type="password"></label>'
        '<button type="submit" name="decision" value="allow">Allow</button>'
        '<button type="submit" name="decision" value="deny">Deny</button></form>'
        "<p class='hint'>This is the project's Workfront emulator: any user name and "
        "password sign in.</p>"
    )
    return _page("Workfront emulator: sign in and allow access", form, status)
