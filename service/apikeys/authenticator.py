"""Who is calling: an API key's client and scopes, from a cache kept fresh.

Keys are looked up by their SHA-256 (see service.apikeys.keys). A lookup
result is kept in a ``HotCache`` (see service.hotcache): served for less than
one second after its row was read, kept warm by a background revalidation, so
a hot token endpoint pays no query per call while a revoked key still stops
working within one second on every replica. Unknown keys are cached too, so a
caller retrying a bad key does not reach the database each time; the cache is
an LRU bounded by ``BROKER_HOT_CACHE_MAX_ENTRIES``.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass

from sqlalchemy import ARRAY, LargeBinary, bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.apikeys.keys import ADMIN, Scope, granted_scopes
from service.crypto import lookup_digest
from service.db.engine import read_all
from service.hotcache import HotCache
from service.metrics import HOT_CACHE_READS


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a stored client, or the bootstrap admin key (id None),
    and what it reaches: connections on ``instances`` (None: every instance),
    all of them or (``own_only``) only those it brought in through its
    connect sessions. Outside its reach a connection does not exist for it."""

    client_id: uuid.UUID | None
    name: str
    scopes: frozenset[str]  # as granted: implied ones included (see granted_scopes)
    instances: frozenset[str] | None = None
    own_only: bool = False

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes

    @property
    def restricted(self) -> bool:
        return self.instances is not None or self.own_only

    def reaches_instance(self, instance: str) -> bool:
        return self.instances is None or instance in self.instances

    def reaches(self, instance: str, brought_by: uuid.UUID | None) -> bool:
        """Whether a connection on ``instance`` brought in by ``brought_by`` is
        within this key's reach."""
        if self.instances is not None and instance not in self.instances:
            return False
        return not self.own_only or (brought_by is not None and brought_by == self.client_id)


# Built once: constructing a statement per call costs more than running it.
_LOOKUP = text(
    "SELECT key_hash, id, name, scopes, instances, connections FROM api_clients"
    " WHERE key_hash = ANY(:hashes) AND revoked_at IS NULL"
).bindparams(bindparam("hashes", type_=ARRAY(LargeBinary)))


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
        self._admin_hash = lookup_digest(admin_key) if admin_key else None
        self._admin = Principal(
            client_id=None, name="bootstrap-admin", scopes=granted_scopes({ADMIN})
        )
        self._cache: HotCache[bytes, Principal] = HotCache(
            seconds=cache_seconds, max_entries=cache_entries
        )

    def cached(self, key: str) -> Principal | None:
        """The caller, when memory knows the key as valid; None: ask ``authenticate``."""
        digest = lookup_digest(key)
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return self._admin
        principal = self._cache.get(digest)
        return None if principal is None or principal is _UNKNOWN else principal

    async def authenticate(self, key: str) -> Principal | None:
        digest = lookup_digest(key)
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return self._admin
        principal = self._cache.get(digest)
        if principal is None:
            principal = await self._cache.load(digest, lambda: self._load(digest))
        return None if principal is _UNKNOWN else principal

    async def _load(self, digest: bytes) -> Principal:
        started, changes = self._cache.read_marker()
        _MISSES.inc()
        principal = (await self._lookup([digest])).get(digest, _UNKNOWN)
        self._cache.store(digest, principal, read_started=started, changes_seen=changes)
        return principal

    async def _lookup(self, digests: list[bytes]) -> dict[bytes, Principal]:
        # Matched by the SHA-256 of a 256-bit random key: how long a comparison
        # of two such hashes takes tells an attacker nothing about a key.
        return {
            bytes(key_hash): Principal(
                client_id=client_id,
                name=name,
                scopes=granted_scopes(scopes),
                instances=None if instances is None else frozenset(instances),
                own_only=connections == "own",
            )
            for key_hash, client_id, name, scopes, instances, connections in await read_all(
                self._reader, _LOOKUP, {"hashes": digests}
            )
        }

    async def revalidate_cache(self) -> None:
        """Re-read the keys served in the last rounds, in one query (see service.hotcache)."""
        served = self._cache.take_served()
        if not served:
            return
        started, changes = self._cache.read_marker()
        _REVALIDATIONS.inc()
        found = await self._lookup([entry.key for entry in served])
        for entry in served:
            principal = found.get(entry.key, _UNKNOWN)
            if principal == entry.value:
                principal = entry.value  # unchanged: the same object keeps the entry
            self._cache.revalidated(entry, principal, read_started=started, changes_seen=changes)

    def forget(self) -> None:
        """Drop the cache (this process revoked a key; others converge within a second)."""
        self._cache.local_change()


_MISSES = HOT_CACHE_READS.labels(cache="keys", kind="miss")
_REVALIDATIONS = HOT_CACHE_READS.labels(cache="keys", kind="revalidation")

# A key the database does not know (or revoked), as cached.
_UNKNOWN = Principal(client_id=None, name="", scopes=frozenset())
