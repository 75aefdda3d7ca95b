"""API keys and scopes for the internal API.

Keys are ``wtb_`` + 43 URL-safe characters (256 random bits); only their
SHA-256 is stored. A lookup result is cached for less than one second per
process (``BROKER_HOT_CACHE_SECONDS``) so a hot token endpoint does not pay a
query per call, while a revoked key still stops working within one second on
every replica. Unknown keys are cached too, so a caller retrying a bad key
does not reach the database each time; the cache is an LRU bounded by
``BROKER_HOT_CACHE_MAX_ENTRIES``, so neither can grow memory without bound.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from cachetools import TTLCache
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import read_one
from service.models import ApiClient

KEY_PREFIX = "wtb_"
SCOPES = ("tokens:read", "connections:read", "connections:write", "admin")
ADMIN = "admin"


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
    def __init__(
        self,
        *,
        reader: AsyncEngine,
        admin_key: str | None,
        cache_seconds: float,
        cache_entries: int,
    ) -> None:
        self._reader = reader
        self._admin_hash = hash_key(admin_key) if admin_key else None
        self._admin = Principal(client_id=None, name="bootstrap-admin", scopes=frozenset({ADMIN}))
        # TTLCache times entries with time.monotonic: a wall-clock jump cannot
        # keep a revoked key alive.
        self._cache: TTLCache[bytes, Principal | None] | None = (
            TTLCache(maxsize=cache_entries, ttl=cache_seconds) if cache_seconds > 0 else None
        )

    async def authenticate(self, key: str) -> Principal | None:
        digest = hash_key(key)
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return self._admin
        cache = self._cache
        if cache is None:
            return await self._lookup(digest)
        try:
            return cache[digest]
        except KeyError:
            pass
        principal = await self._lookup(digest)
        cache[digest] = principal
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
        if self._cache is not None:
            self._cache.clear()


def now_utc() -> datetime:
    return datetime.now(UTC)
