"""Signed sign-in states: an attempt in flight costs the broker no storage.

Starting a sign-in stores nothing: everything the callback needs travels in
the OAuth ``state`` itself, signed, and in the browser's binding cookie. Only
a callback that passes every check writes one row (service.signin.attempts),
which makes the state single-use; an unauthenticated flood of
``/oauth/authorize`` therefore fills no table.

``state`` (base64url, 92 characters)::

    version (1) | issued, Unix seconds (4) | nonce (16) | connect link id (16, zeros: none)
    | instance (8): the first bytes of SHA-256 of its name
    | tag (16): HMAC(k, "state" | the above)                 authentic, unchanged
    | binding (8): HMAC(k, "binding" | the above | browser)   started in this browser

Two tags, so a callback can be told apart as forged (``state_unknown``) or
from another browser (``other_browser``). The binding cookie is a random
secret with its issue time and a tag of its own: only a cookie the broker
issued (within the attempt lifetime) is kept for a new attempt, never one
planted in the browser. The PKCE verifier is derived from the state under a
key of its own and never stored. ``k`` is derived from each keyring key
(primary signs, every key verifies), so a key rotation keeps attempts in flight
valid until the old key is removed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from service.crypto import TokenCipher

_VERSION = 2  # 1 carried no instance: those attempts start again
_HEAD = struct.Struct(">BI16s16s8s")  # version, issued, nonce, link id, instance
_TAG, _BINDING = 16, 8
STATE_BYTES = _HEAD.size + _TAG + _BINDING
_COOKIE = struct.Struct(">32sI")  # secret, issued
_COOKIE_TAG = 16
_NO_LINK = bytes(16)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"\0".join(parts), hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class VerifiedState:
    issued: float  # Unix seconds
    link_id: uuid.UUID | None
    instance: str | None  # the instance it was started for (None: none configured now)
    bound_to_browser: bool  # the binding tag matches the browser's cookie
    code_verifier: str = field(repr=False)  # for PKCE, when the attempt used it


@dataclass(frozen=True, slots=True)
class NewState:
    state: str = field(repr=False)
    code_verifier: str = field(repr=False)


def _instance_tag(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()[:8]


class StateSigner:
    def __init__(
        self, cipher: TokenCipher, *, lifetime_seconds: float, instances: Iterable[str]
    ) -> None:
        self._keys = cipher.derived_keys(b"workfront-token-broker signin v1")
        self.lifetime_seconds = lifetime_seconds
        self._instances = {_instance_tag(name): name for name in instances}

    # The browser's binding cookie -----------------------------------------------------

    def new_browser_cookie(self) -> str:
        head = _COOKIE.pack(secrets.token_bytes(32), int(time.time()))
        return _b64(head + _mac(self._keys[0], b"browser", head)[:_COOKIE_TAG])

    def issued_browser_cookie(self, cookie: str | None) -> bool:
        """Whether the broker issued this cookie, within the attempt lifetime."""
        raw = None if cookie is None or len(cookie) > 100 else _unb64(cookie)
        if raw is None or len(raw) != _COOKIE.size + _COOKIE_TAG:
            return False
        head, tag = raw[: _COOKIE.size], raw[_COOKIE.size :]
        if not any(
            hmac.compare_digest(tag, _mac(key, b"browser", head)[:_COOKIE_TAG])
            for key in self._keys
        ):
            return False
        issued: int = _COOKIE.unpack(head)[1]
        return time.time() - issued < self.lifetime_seconds

    # The state ------------------------------------------------------------------------

    def new_state(self, *, browser: str, link_id: uuid.UUID | None, instance: str) -> NewState:
        key = self._keys[0]
        head = _HEAD.pack(
            _VERSION,
            int(time.time()),
            secrets.token_bytes(16),
            link_id.bytes if link_id is not None else _NO_LINK,
            _instance_tag(instance),
        )
        signed = head + _mac(key, b"state", head)[:_TAG]
        state = _b64(signed + _mac(key, b"binding", signed, browser.encode())[:_BINDING])
        return NewState(state, _code_verifier(key, state))

    def verify(self, state: str, *, browser: str | None) -> VerifiedState | None:
        """What an authentic state says (None: forged, damaged or not ours)."""
        raw = _unb64(state) if len(state) <= 2 * STATE_BYTES else None
        if raw is None or len(raw) != STATE_BYTES or raw[0] != _VERSION:
            return None
        head, tag = raw[: _HEAD.size], raw[_HEAD.size : _HEAD.size + _TAG]
        signed, binding = raw[: _HEAD.size + _TAG], raw[_HEAD.size + _TAG :]
        for key in self._keys:
            if hmac.compare_digest(tag, _mac(key, b"state", head)[:_TAG]):
                break
        else:
            return None
        bound = browser is not None and hmac.compare_digest(
            binding, _mac(key, b"binding", signed, browser.encode())[:_BINDING]
        )
        _, issued, _, link, instance = _HEAD.unpack(head)
        return VerifiedState(
            issued=float(issued),
            link_id=None if link == _NO_LINK else uuid.UUID(bytes=link),
            instance=self._instances.get(instance),
            bound_to_browser=bound,
            code_verifier=_code_verifier(key, state),
        )


def _code_verifier(key: bytes, state: str) -> str:
    """The PKCE verifier of the attempt ``state`` started (RFC 7636: 43
    characters of base64url), derived under the key that signed it, never stored."""
    return _b64(_mac(key, b"pkce", state.encode()))
