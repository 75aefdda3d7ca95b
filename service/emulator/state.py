"""The emulator's state: users, codes, grants, refresh tokens, sessions, counters.

Nothing is persisted: it lives on ``app.state.emulator`` and dies with the
process. The grant logic here is synchronous: a request's effect on the state
happens between two awaits, so one event loop makes it atomic (``lock`` marks
the critical section). It answers in OAuth2's terms (``Answer``); the HTTP
layer (``service.emulator.app``) only reads requests and writes answers.

Invariants, as Workfront (and RFC 6749 §4.1.2, §10.4) behave:
- a code is burnt by its first presentation; a code seen twice revokes what
  it issued;
- with rotation on, presenting a rotated-out refresh token (reuse) revokes the
  whole grant: every refresh token and sessionID it produced.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

from service.emulator.settings import EmulatorSettings
from service.workfront.protocol import pkce_challenge

_COUNTERS = (
    "token_requests codes_issued code_exchanges refreshes_ok refresh_failures reuse_detected"
    " code_reuse faults_served"
).split()
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass
class _User:
    user_id: str
    customer_id: str
    username: str


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    user_id: str
    challenge: str | None
    expires_at: float
    used: bool = False
    grant_id: str | None = None  # what this code issued, revoked if the code comes back


@dataclass
class _Grant:
    """One authorization; its id is the ``wid``. The refresh-token family hangs off it."""

    user_id: str
    client_id: str
    refresh_tokens: list[str] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)
    revoked: bool = False


@dataclass
class _RefreshToken:
    grant_id: str
    status: Literal["active", "rotated", "revoked"] = "active"


@dataclass
class _Session:
    user_id: str
    grant_id: str
    expires_at: float


class Answer(NamedTuple):
    """What the token endpoint answers; ``outcome`` is its request-log word."""

    status: int
    body: dict[str, Any]
    outcome: str
    headers: dict[str, str] | None = None


def oauth_error(status: int, error: str, description: str, outcome: str | None = None) -> Answer:
    body = {"error": error, "error_description": description}
    return Answer(status, body, outcome or error, NO_STORE)


def h32(text: str) -> str:
    """A stable 32-hex-character id derived from ``text`` (user, customer, project ids)."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class EmulatorState:
    """All mutable emulator state. Handlers mutate it only between awaits (see ``lock``)."""

    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        # Token handling is synchronous once the body is read, so a single event loop makes it
        # atomic already; the lock documents the critical section and keeps it atomic should an
        # await ever be added inside it (e.g. simulated storage latency).
        self.lock = asyncio.Lock()
        self.reset()

    def reset(self) -> None:
        self.users: dict[str, _User] = {}
        self.codes: dict[str, _Code] = {}
        self.grants: dict[str, _Grant] = {}
        self.refresh_tokens: dict[str, _RefreshToken] = {}
        self.sessions: dict[str, _Session] = {}
        self.faults: deque[dict[str, Any]] = deque()
        self.requests: list[dict[str, Any]] = []
        # The API side (service.emulator.objects): calls with their headers,
        # queued faults, and each customer's objects by kind.
        self.api_requests: list[dict[str, Any]] = []
        self.api_faults: deque[dict[str, Any]] = deque()
        self.objects: dict[str, dict[str, dict[str, Any]]] = {}
        self.api_in_flight = 0
        self.api_in_flight_most = 0
        self.counters: Counter[str] = Counter()

    # -- authorize -------------------------------------------------------------------------
    def authorize_error(self, p: Mapping[str, str]) -> str | None:
        """Why these authorize parameters are refused, or None. Never redirect on these."""
        s = self.settings
        redirect_uri = p.get("redirect_uri", "")
        url = urlsplit(redirect_uri)
        if p.get("client_id") != s.client_id:
            return "Unknown client_id."
        if not redirect_uri or url.scheme not in ("http", "https") or not url.netloc:
            return "redirect_uri is missing or not an absolute http(s) URL."
        if s.redirect_uri is not None and redirect_uri != s.redirect_uri:
            return "redirect_uri does not match the one registered for this app."
        if p.get("response_type") != "code":
            return "response_type must be 'code'."
        if p.get("code_challenge") and p.get("code_challenge_method") != "S256":
            return "Only code_challenge_method=S256 is supported."
        return None

    def issue_code(self, p: Mapping[str, str], username: str) -> str:
        user_id = h32("user:" + username)
        customer_id = h32("customer:" + self.settings.domain)
        self.users.setdefault(user_id, _User(user_id, customer_id, username))
        code = secrets.token_urlsafe(32)
        self.codes[code] = _Code(
            client_id=p["client_id"],
            redirect_uri=p["redirect_uri"],
            user_id=user_id,
            challenge=p.get("code_challenge") or None,
            expires_at=time.monotonic() + self.settings.code_ttl_seconds,
        )
        self.counters["codes_issued"] += 1
        return code

    # -- tokens ----------------------------------------------------------------------------
    def _new_session(self, grant_id: str) -> str:
        token = secrets.token_hex(16)  # Workfront sessionIDs are 32 hex characters
        grant = self.grants[grant_id]
        expires_at = time.monotonic() + self.settings.session_ttl_seconds
        self.sessions[token] = _Session(grant.user_id, grant_id, expires_at)
        grant.sessions.append(token)
        return token

    def _new_refresh_token(self, grant_id: str) -> str:
        token = secrets.token_urlsafe(32)
        self.refresh_tokens[token] = _RefreshToken(grant_id)
        self.grants[grant_id].refresh_tokens.append(token)
        return token

    def mint_grant(self, username: str) -> dict[str, str]:
        """A grant as a completed authorize + code exchange would make it (test seeding)."""
        user_id = h32("user:" + username)
        customer_id = h32("customer:" + self.settings.domain)
        self.users.setdefault(user_id, _User(user_id, customer_id, username))
        grant_id = secrets.token_hex(16)
        self.grants[grant_id] = _Grant(user_id=user_id, client_id=self.settings.client_id)
        return {
            "user_id": user_id,
            "customer_id": customer_id,
            "wid": grant_id,
            "access_token": self._new_session(grant_id),
            "refresh_token": self._new_refresh_token(grant_id),
        }

    def revoke_grant(self, grant_id: str) -> None:
        """Kill the whole family: every refresh token and sessionID the grant produced."""
        grant = self.grants[grant_id]
        grant.revoked = True
        for token in grant.refresh_tokens:
            self.refresh_tokens[token].status = "revoked"
        for session in grant.sessions:
            self.sessions.pop(session, None)

    def live_session(self, token: str | None) -> _Session | None:
        session = self.sessions.get(token or "")
        return session if session and session.expires_at > time.monotonic() else None

    def _success(self, grant_id: str, refresh_token: str | None) -> Answer:
        body: dict[str, Any] = {
            "token_type": "sessionID",
            "access_token": self._new_session(grant_id),
        }
        if refresh_token is not None:
            body["refresh_token"] = refresh_token
        body |= {"expires_in": self.settings.expires_in, "wid": grant_id}
        return Answer(200, body, "ok", NO_STORE)

    def token_grant(self, p: Mapping[str, str], client_id: str) -> Answer:
        grant_type = p.get("grant_type")
        if grant_type == "authorization_code":
            return self._exchange_code(p, client_id)
        if grant_type == "refresh_token":
            answer = self._refresh(p, client_id)
            self.counters["refreshes_ok" if answer.status == 200 else "refresh_failures"] += 1
            return answer
        if not grant_type:
            return oauth_error(400, "invalid_request", "grant_type is required.")
        return oauth_error(400, "unsupported_grant_type", f"Unsupported grant_type {grant_type!r}.")

    def _exchange_code(self, p: Mapping[str, str], client_id: str) -> Answer:
        if not p.get("code"):
            return oauth_error(400, "invalid_request", "code is required.")
        code = self.codes.get(p["code"])
        if code is None or code.client_id != client_id:
            return oauth_error(400, "invalid_grant", "Unknown authorization code.")
        if code.used:
            # RFC 6749 §4.1.2: a code seen twice may be stolen; revoke what it issued.
            self.counters["code_reuse"] += 1
            if code.grant_id is not None:
                self.revoke_grant(code.grant_id)
            return oauth_error(400, "invalid_grant", "Authorization code was already used.")
        code.used = True  # burnt by its first presentation, even one that fails below
        if code.expires_at <= time.monotonic():
            return oauth_error(400, "invalid_grant", "Authorization code expired.")
        if p.get("redirect_uri") != code.redirect_uri:
            return oauth_error(
                400, "invalid_grant", "redirect_uri does not match the authorize call."
            )
        verifier = p.get("code_verifier")
        if code.challenge is not None and (
            not verifier or pkce_challenge(verifier) != code.challenge
        ):
            return oauth_error(400, "invalid_grant", "PKCE verification failed.")
        if code.challenge is None and verifier:
            return oauth_error(400, "invalid_grant", "code_verifier sent but no challenge was.")
        grant_id = secrets.token_hex(16)
        self.grants[grant_id] = _Grant(user_id=code.user_id, client_id=client_id)
        code.grant_id = grant_id
        self.counters["code_exchanges"] += 1
        return self._success(grant_id, self._new_refresh_token(grant_id))

    def _refresh(self, p: Mapping[str, str], client_id: str) -> Answer:
        s = self.settings
        presented = p.get("refresh_token")
        if not presented:
            return oauth_error(400, "invalid_request", "refresh_token is required.")
        record = self.refresh_tokens.get(presented)
        if record is None or self.grants[record.grant_id].client_id != client_id:
            return oauth_error(400, "invalid_grant", "Unknown refresh token.")
        if record.status == "revoked":
            return oauth_error(400, "invalid_grant", "Refresh token was revoked.")
        if record.status == "rotated":
            if s.reuse_detection:
                self.revoke_grant(record.grant_id)
                self.counters["reuse_detected"] += 1
                return oauth_error(400, "invalid_grant", "Refresh token reused.", "reuse_detected")
            return oauth_error(400, "invalid_grant", "Refresh token was rotated out.")
        if s.rotate_refresh_tokens:
            record.status = "rotated"
            return self._success(record.grant_id, self._new_refresh_token(record.grant_id))
        return self._success(record.grant_id, None if s.omit_refresh_token else presented)

    def stats(self) -> dict[str, int]:
        out = {key: self.counters[key] for key in _COUNTERS}
        now = time.monotonic()
        out["sessions_live"] = sum(1 for x in self.sessions.values() if x.expires_at > now)
        out["grants_live"] = sum(1 for g in self.grants.values() if not g.revoked)
        out["users"] = len(self.users)
        out["faults_queued"] = len(self.faults)
        out["api_calls"] = len(self.api_requests)
        out["api_in_flight_most"] = self.api_in_flight_most
        return out
