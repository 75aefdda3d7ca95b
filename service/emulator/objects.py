"""The emulator's object API: projects and tasks under /attask/api/<version>/,
enough for calls made through the broker's proxy and the client library.

Every API call (these and the session/logout calls) passes ``api_gate``: it
is recorded with its headers (tests assert what reached Workfront), takes the
next queued API fault (a 429 with Retry-After, say), and checks the
``sessionID`` header, answering a dead session as Workfront does (a 401, or
the ``dead_session_status`` switch's 2xx, with the AuthenticationException
body). Two endpoints move bulk data without holding it: an export that
streams ``bytes`` of JSON, and an upload that answers the size and SHA-256 of
what it was sent.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from service.emulator.state import EmulatorState, _Session, h32
from service.workfront.protocol import API_PATH

OBJECT_CODES = {"proj": "PROJ", "task": "TASK"}
_SEEDED = {
    "proj": ("Website relaunch", "Q3 campaign", "Data migration"),
    "task": ("Draft copy", "Review design", "Publish"),
}
NOT_LOGGED_IN = {
    "error": {
        "class": "com.attask.common.AuthenticationException",
        "message": "You are not currently logged in.",
    }
}
_EXPORT_CHUNK = 64 * 1024


def not_logged_in(state: EmulatorState) -> Response:
    """Workfront's answer to a dead or unknown sessionID (its status a switch)."""
    return JSONResponse(NOT_LOGGED_IN, state.settings.dead_session_status)


def api_gate(state: EmulatorState, request: Request) -> _Session | Response:
    """Record the call, serve a queued API fault, check the session: the live
    session, or the answer to send instead."""
    # Every header, lowercased: tests look for what must never arrive too.
    state.api_requests.append(
        {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "headers": {name: value for name, value in request.headers.items()},
        }
    )
    if state.api_faults:
        fault = state.api_faults.popleft()
        headers = {}
        if fault.get("retry_after") is not None:
            headers["Retry-After"] = str(fault["retry_after"])
        error = {"error": {"class": "injected", "message": f"injected status {fault['status']}"}}
        return JSONResponse(error, fault["status"], headers)
    session = state.live_session(request.headers.get("sessionID"))
    if session is None:
        return not_logged_in(state)
    return session


def _store(state: EmulatorState, session: _Session, obj: str) -> dict[str, dict[str, Any]]:
    """This customer's objects of one kind, seeded on first use."""
    customer = state.users[session.user_id].customer_id
    key = f"{customer}:{obj}"
    if key not in state.objects:
        state.objects[key] = {
            (oid := h32(f"{obj}:{customer}:{name}")): {
                "ID": oid,
                "name": name,
                "objCode": OBJECT_CODES[obj],
                "status": "CUR",
            }
            for name in _SEEDED[obj]
        }
    return state.objects[key]


def _not_found(obj: str, oid: str) -> Response:
    message = f"{OBJECT_CODES.get(obj, obj[:20].upper())} with ID {oid[:40]} does not exist"
    return JSONResponse({"error": {"class": "NotFoundException", "message": message}}, 404)


async def _fields(request: Request) -> dict[str, Any] | Response:
    try:
        fields = json.loads(await request.body() or b"{}")
    except ValueError:
        fields = None
    if not isinstance(fields, dict):
        return JSONResponse({"error": {"message": "a JSON object is required"}}, 422)
    return fields


def add_object_routes(app: FastAPI, state: EmulatorState) -> None:
    """Mount the object API on ``app``."""

    @app.get(API_PATH + "/{obj}/export")
    async def export(request: Request, version: str, obj: str) -> Response:
        """``bytes`` (at most 1 GiB) of a JSON array, streamed as it is made."""
        gate = api_gate(state, request)
        if isinstance(gate, Response):
            return gate
        raw = request.query_params.get("bytes", "1024")
        if obj not in OBJECT_CODES or not raw.isdigit() or not 2 <= int(raw) <= 2**30:
            return JSONResponse({"error": {"message": "bytes must be 2 .. 2**30"}}, 422)
        size = int(raw)

        async def chunks() -> AsyncIterator[bytes]:
            yield b"["
            left = size - 2
            filler = b" " * _EXPORT_CHUNK
            while left > 0:
                step = min(left, _EXPORT_CHUNK)
                yield filler[:step]
                left -= step
            yield b"]"

        return StreamingResponse(chunks(), media_type="application/json")

    @app.post(API_PATH + "/upload")
    async def upload(request: Request, version: str) -> Response:
        """Read the body as it comes; answer its size and SHA-256."""
        gate = api_gate(state, request)
        if isinstance(gate, Response):
            return gate
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.stream():
            digest.update(chunk)
            size += len(chunk)
        return JSONResponse({"data": {"handle": secrets.token_hex(8), "size": size,
                                      "sha256": digest.hexdigest()}})  # fmt: skip

    @app.get(API_PATH + "/{obj}/search")
    async def search(request: Request, version: str, obj: str) -> Response:
        gate = api_gate(state, request)
        if isinstance(gate, Response):
            return gate
        if obj not in OBJECT_CODES:
            return _not_found(obj, "")
        found = list(_store(state, gate, obj).values())
        name = request.query_params.get("name")
        if name is not None:
            found = [o for o in found if o.get("name") == name]
        return JSONResponse({"data": found})

    @app.get(API_PATH + "/{obj}/{oid}")
    async def get_object(request: Request, version: str, obj: str, oid: str) -> Response:
        gate = api_gate(state, request)
        if isinstance(gate, Response):
            return gate
        found = _store(state, gate, obj).get(oid) if obj in OBJECT_CODES else None
        return JSONResponse({"data": found}) if found else _not_found(obj, oid)

    @app.post(API_PATH + "/{obj}")
    async def create(request: Request, version: str, obj: str) -> Response:
        """Create an object: the request's JSON object becomes its fields."""
        gate = api_gate(state, request)
        if isinstance(gate, Response):
            return gate
        if obj not in OBJECT_CODES:
            return _not_found(obj, "")
        fields = await _fields(request)
        if isinstance(fields, Response):
            return fields
        oid = h32(f"{obj}:{secrets.token_hex(8)}")
        made = {**fields, "ID": oid, "objCode": OBJECT_CODES[obj]}
        _store(state, gate, obj)[oid] = made
        return JSONResponse({"data": made})

    @app.put(API_PATH + "/{obj}/{oid}")
    async def update(request: Request, version: str, obj: str, oid: str) -> Response:
        gate = api_gate(state, request)
        if isinstance(gate, Response):
            return gate
        found = _store(state, gate, obj).get(oid) if obj in OBJECT_CODES else None
        if found is None:
            return _not_found(obj, oid)
        fields = await _fields(request)
        if isinstance(fields, Response):
            return fields
        found.update({k: v for k, v in fields.items() if k not in ("ID", "objCode")})
        return JSONResponse({"data": found})

    @app.delete(API_PATH + "/{obj}/{oid}")
    async def delete(request: Request, version: str, obj: str, oid: str) -> Response:
        gate = api_gate(state, request)
        if isinstance(gate, Response):
            return gate
        objects = _store(state, gate, obj) if obj in OBJECT_CODES else {}
        if objects.pop(oid, None) is None:
            return _not_found(obj, oid)
        return JSONResponse({"data": {"success": True}})
