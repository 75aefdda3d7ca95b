"""Injected faults and latency of the emulator's token endpoint.

Tests and benchmarks queue faults through POST /__emulator/faults (validated
in ``service.emulator.control``); each token request takes the next one in
arrival order. The kinds:

- ``status``: answer that status (5xx, 429 with an optional Retry-After, ...)
  with a JSON error body, without touching any grant;
- ``timeout``: answer 504 after ``hang_seconds``, or when the client leaves;
- ``drop``: close the connection without answering;
- ``lost_response``: handle the request for real, then drop the connection
  (served by the token endpoint itself, which owns the grant logic).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from service.emulator.settings import EmulatorSettings

KINDS = ("status", "timeout", "drop", "lost_response")
RAW_SEND = "workfront_emulator.raw_send"  # scope key: the server's own send callable


class ConnectionDropped(Exception):
    """Raised by a "drop" fault when the server's socket cannot be reached (in-process use)."""


async def delay(settings: EmulatorSettings) -> None:
    """The token endpoint's configured latency (``latency_ms``)."""
    if settings.latency_ms > 0:
        await asyncio.sleep(settings.latency_ms / 1000)


async def serve_fault(
    fault: Mapping[str, Any], request: Request, entry: dict[str, Any], *, hang_seconds: float
) -> Response:
    """Answer (or not) as a ``status``, ``timeout`` or ``drop`` fault says; ``entry``
    is the request's line in the request log."""
    entry |= {"status": 0, "outcome": "fault", "fault": fault["kind"]}
    if fault["kind"] == "drop":
        return await drop_connection(request)
    if fault["kind"] == "timeout":
        await _hang(request, hang_seconds)
        entry["status"] = 504
        return JSONResponse({"error": "timeout", "error_description": "injected"}, 504)
    status, retry_after = fault["status"], fault.get("retry_after")
    entry["status"] = status
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    desc = f"injected status {status}"
    return JSONResponse({"error": "fault", "error_description": desc}, status, headers)


async def drop_connection(request: Request) -> Response:
    """Close the socket without answering. ASGI has no verb for that, so reach the uvicorn
    request cycle behind the server's ``send`` (captured by _EmulatorApp) and close its
    transport. Without a server socket (httpx.ASGITransport, or mounted in another app) raise
    ConnectionDropped instead, which the in-process client sees as an exception."""
    cycle = getattr(request.scope.get(RAW_SEND), "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None or not callable(getattr(transport, "close", None)):
        raise ConnectionDropped("injected 'drop' fault")
    transport.close()
    # Wait until the server has noticed, so it neither writes our reply nor logs an error.
    for _ in range(100):
        if getattr(cycle, "disconnected", True):
            break
        await asyncio.sleep(0.001)
    return Response(status_code=500)  # discarded: the connection is gone


async def _hang(request: Request, seconds: float) -> None:
    """Sleep ``seconds``, but stop early if the client goes away (so shutdown is not held)."""

    async def until_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(until_disconnect(), seconds)
