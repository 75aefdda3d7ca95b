"""The emulator's switches under /__emulator/ (tests and benchmarks only).

Settings, queued faults (token endpoint and API calls), the request logs
(API calls with their headers), counters, reset, revoking a user, seeding
grants, and expiring or ending sessions. Every input is validated before
anything changes: a bad field answers 422 and changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import time
import typing
from collections import Counter
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from service.emulator.faults import KINDS
from service.emulator.settings import EmulatorSettings
from service.emulator.state import EmulatorState

_SETTING_TYPES = typing.get_type_hints(EmulatorSettings)
# Reset restores behaviour but keeps the identity the client was configured against.
_KEPT_ON_RESET = {"client_id", "client_secret", "redirect_uri", "domain", "lane"}


class _Invalid(ValueError):
    """Bad input to a control endpoint: answered 422 by the app's exception handler."""


def add_control_routes(app: FastAPI, state: EmulatorState) -> None:
    """Mount the /__emulator/ routes on ``app``, acting on ``state``."""

    @app.exception_handler(_Invalid)
    async def invalid(request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": str(exc)}, 422)

    @app.get("/__emulator/settings")
    async def get_settings() -> Response:
        return JSONResponse(_shown(state.settings))

    @app.patch("/__emulator/settings")
    async def patch_settings(request: Request) -> Response:
        data = await _json_object(request)
        # Validate everything first so a bad field changes nothing.
        checked = {name: _check_setting(name, value) for name, value in data.items()}
        for name, value in checked.items():
            setattr(state.settings, name, value)
        return JSONResponse(_shown(state.settings))

    @app.post("/__emulator/faults")
    async def add_faults(request: Request) -> Response:
        data = await _json_object(request)
        if not isinstance(data.get("faults"), list):
            raise _Invalid("body must be {'faults': [...]}")
        state.faults.extend([_check_fault(raw) for raw in data["faults"]])
        return JSONResponse({"queued": len(state.faults)})

    @app.delete("/__emulator/faults")
    async def clear_faults() -> Response:
        cleared = len(state.faults)
        state.faults.clear()
        return JSONResponse({"cleared": cleared})

    @app.get("/__emulator/requests")
    async def get_requests() -> Response:
        return JSONResponse({"requests": state.requests})

    @app.get("/__emulator/stats")
    async def get_stats() -> Response:
        return JSONResponse(state.stats())

    @app.post("/__emulator/reset")
    async def reset() -> Response:
        state.reset()
        defaults = EmulatorSettings()
        for f in dataclasses.fields(EmulatorSettings):
            if f.name not in _KEPT_ON_RESET:
                setattr(state.settings, f.name, getattr(defaults, f.name))
        return JSONResponse({"reset": True})

    @app.post("/__emulator/revoke")
    async def revoke_user(request: Request) -> Response:
        user_id = (await _json_object(request)).get("user_id")
        if not isinstance(user_id, str):
            raise _Invalid("body must be {'user_id': '...'}")
        grant_ids = [gid for gid, g in state.grants.items() if g.user_id == user_id]
        for gid in grant_ids:
            state.revoke_grant(gid)
        return JSONResponse({"revoked_grants": len(grant_ids)})

    @app.post("/__emulator/grants")
    async def mint_grants(request: Request) -> Response:
        # Seeds many connected users at once for load tests, skipping the
        # browser round trips; the grants behave exactly like exchanged ones.
        body = await _json_object(request)
        usernames = body.get("usernames")
        if not isinstance(usernames, list) or not all(
            isinstance(name, str) and name for name in usernames
        ):
            raise _Invalid("usernames must be a list of non-empty strings")
        async with state.lock:
            grants = [state.mint_grant(name) for name in usernames]
        return JSONResponse({"grants": grants})

    @app.post("/__emulator/expire-sessions")
    async def expire_sessions(request: Request) -> Response:
        """Expire every live session, or with {"username": ...} that user's only."""
        username = (await _json_object(request)).get("username")
        if username is not None and not isinstance(username, str):
            raise _Invalid("username must be a string")
        now = time.monotonic()
        live = [
            x
            for x in state.sessions.values()
            if x.expires_at > now
            and (username is None or state.users[x.user_id].username == username)
        ]
        for session in live:
            session.expires_at = now
        return JSONResponse({"expired": len(live)})

    @app.post("/__emulator/logout-all")
    async def logout_all() -> Response:
        """End every session, as a user logging out everywhere would."""
        ended = len(state.sessions)
        state.sessions.clear()
        return JSONResponse({"ended": ended})

    @app.post("/__emulator/api-faults")
    async def add_api_faults(request: Request) -> Response:
        """Answers for the next API calls, in order: {"faults": [{"status": 429,
        "retry_after": 2}, ...]} (the token endpoint has its own, /faults)."""
        data = await _json_object(request)
        if not isinstance(data.get("faults"), list):
            raise _Invalid("body must be {'faults': [...]}")
        checked = [
            _check_fault({"kind": "status", **raw} if isinstance(raw, dict) else raw)
            for raw in data["faults"]
        ]
        state.api_faults.extend(checked)
        return JSONResponse({"queued": len(state.api_faults)})

    @app.get("/__emulator/api-requests")
    async def get_api_requests() -> Response:
        """Every API call (session, logout, objects) with its headers."""
        return JSONResponse({"requests": state.api_requests})

    @app.get("/__emulator/refresh-token-reuse")
    async def refresh_token_reuse() -> Response:
        # Faulted requests never reached the grant logic, so retrying one with the same
        # token is safe and is not counted. Counter keeps first-seen order.
        seen = Counter(
            e["refresh_token"]
            for e in state.requests
            if e.get("refresh_token") and e.get("outcome") != "fault"
        )
        return JSONResponse({"presented_twice": [t for t, n in seen.items() if n > 1]})


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.body() or b"{}")
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise _Invalid("body must be a JSON object")
    return data


def _check_fault(raw: object) -> dict[str, Any]:
    if not isinstance(raw, dict) or raw.get("kind") not in KINDS:
        raise _Invalid("each fault needs kind 'status', 'timeout', 'drop' or 'lost_response'")
    status, retry_after = raw.get("status"), raw.get("retry_after")
    # 204/304 cannot carry the JSON error body, so they are refused rather than mangled.
    if raw["kind"] == "status" and (
        not isinstance(status, int) or not 200 <= status <= 599 or status in (204, 304)
    ):
        raise _Invalid("a status fault needs an integer status 200..599 (not 204/304)")
    if retry_after is not None and not isinstance(retry_after, int | str):
        raise _Invalid("retry_after must be an integer or a string")
    return dict(raw)


def _check_setting(name: str, value: object) -> object:
    hint = _SETTING_TYPES.get(name)
    bad = _Invalid(f"bad value for setting {name!r}: {value!r}")
    if hint is None:
        raise _Invalid(f"unknown setting {name!r}")
    if hint is bool or isinstance(value, bool):  # bool is an int: keep it out of numbers
        if hint is not bool or not isinstance(value, bool):
            raise bad
    elif hint in (int, float):
        if not isinstance(value, int | float) or value < 0 or (hint is int and value % 1):
            raise bad
        return float(value) if hint is float else int(value)
    elif hint is str and not (isinstance(value, str) and value):
        raise bad
    elif hint is not str and not (value is None or isinstance(value, str)):  # str | None
        raise bad
    return value


def _shown(settings: EmulatorSettings) -> dict[str, object]:
    """The settings as the switch endpoints answer them: never the client
    secret (compose can start the emulator where others reach it)."""
    shown = dataclasses.asdict(settings)
    shown.pop("client_secret", None)
    return shown
