"""API keys and scopes for the internal API.

Keys are ``wtb_`` + 43 URL-safe characters (256 random bits); only their
SHA-256 is stored. A lookup result is cached for at most one second per
process so a hot token endpoint does not pay a query per call, while a
revoked key still stops working within one second on every replica.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import read_one
from service.models import ApiClient

KEY_PREFIX = "wtb_"
SCOPES = ("tokens:read", "connections:read", "connections:write", "admin")
ADMIN = "admin"
CACHE_SECONDS = 1.0
_CACHE_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a stored client, or the bootstrap admin key (id None)."""

    client_id: uuid.UUID | None
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return ADMIN in self.scopes or scope in self.scopes


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_hint(key: str) -> str:
    """A short, non-secret label an operator can match against (prefix + 4 chars)."""
    return key[: len(KEY_PREFIX) + 4]


class ApiKeyAuthenticator:
    def __init__(self, *, reader: AsyncEngine, admin_key: str | None) -> None:
        self._reader = reader
        self._admin_hash = hash_key(admin_key) if admin_key else None
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}

    async def authenticate(self, key: str) -> Principal | None:
        digest = hash_key(key)
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return Principal(client_id=None, name="bootstrap-admin", scopes=frozenset({ADMIN}))
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        principal = await self._lookup(digest)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[digest] = (now + CACHE_SECONDS, principal)
        return principal

    async def _lookup(self, digest: bytes) -> Principal | None:
        query = select(ApiClient.id, ApiClient.name, ApiClient.scopes, ApiClient.key_hash).where(
            ApiClient.key_hash == digest, ApiClient.revoked_at.is_(None)
        )
        row = await read_one(self._reader, query)
        # The index lookup already matched; compare again in constant time so the
        # decision never depends on a short-circuiting byte comparison.
        if row is None:
            return None
        client_id, name, scopes, key_hash = row
        if not hmac.compare_digest(key_hash, digest):
            return None
        return Principal(client_id=client_id, name=name, scopes=frozenset(scopes))

    def forget(self) -> None:
        """Drop the cache (this process revoked a key; others converge within a second)."""
        self._cache.clear()


def now_utc() -> datetime:
    return datetime.now(UTC)
