"""The emulator's behaviour knobs (``EmulatorSettings``).

One mutable instance per emulator, shared by its state and its routes, so a
PATCH /__emulator/settings takes effect on the next request.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EmulatorSettings:
    """Behaviour knobs; mutable at run time through PATCH /__emulator/settings."""

    client_id: str = "demo-client"
    client_secret: str = "demo-secret"
    redirect_uri: str | None = None  # when set, authorize + token calls must use exactly it
    domain: str = "emulator"  # echoed to the callback
    lane: str = "my"
    expires_in: int = 0  # value returned in token responses
    session_ttl_seconds: float = 1800.0  # how long an issued sessionID is accepted
    rotate_refresh_tokens: bool = True
    reuse_detection: bool = True
    omit_refresh_token: bool = False  # rotation off: omit refresh_token instead of repeating it
    latency_ms: float = 0.0  # added to every token-endpoint request
    api_latency_ms: float = 0.0  # added to every /attask/api/ call
    code_ttl_seconds: float = 120.0
    hang_seconds: float = 30.0  # how long a "timeout" fault sleeps before answering
    # The status of an API call with a dead or unknown sessionID: 401, or 200
    # as some Workfront answers are, with the same AuthenticationException body.
    dead_session_status: int = 401
