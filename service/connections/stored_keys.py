"""Which encryption keys the stored values use, and whether this process has them all.

A broker whose keyring lacks a key that some stored value uses would answer
`stored-token-unreadable` for those connections. It is caught before that:
`serve` refuses to start, and `/readyz` turns 503, naming the missing key ids
(ids only, never key material), so a key is not dropped before
`keys rotate` has moved every value off it.
"""

from __future__ import annotations

import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from service.crypto import TokenCipher

# The key id is the part before the first ':' of every sealed value.
_STORED_KEY_IDS = text(
    """
    SELECT split_part(access_token_enc, ':', 1) FROM connections
    UNION SELECT split_part(refresh_token_enc, ':', 1) FROM connections
    """
)
# A full scan of the connections table: cheap at 100,000 rows, yet not for
# every readiness probe.
RECHECK_SECONDS = 60.0


async def missing_key_ids(conn: AsyncConnection, cipher: TokenCipher) -> list[str]:
    """Key ids used by stored values that ``cipher`` does not have, sorted."""
    stored = set((await conn.scalars(_STORED_KEY_IDS)).all())
    return sorted(stored - set(cipher.key_ids))


def missing_keys_problem(missing: list[str]) -> str:
    named = ", ".join(repr(key_id) for key_id in missing)
    return (
        f"BROKER_ENCRYPTION_KEYS: stored tokens use key id {named}, which is not configured; "
        "add it back, and drop a key only after `keys rotate` has moved every value off it"
    )


class StoredKeyCheck:
    """missing_key_ids, remembered for RECHECK_SECONDS (for /readyz)."""

    def __init__(self, cipher: TokenCipher) -> None:
        self._cipher = cipher
        self._checked_at: float | None = None
        self._missing: list[str] = []

    async def missing(self, conn: AsyncConnection) -> list[str]:
        now = time.monotonic()
        if self._checked_at is None or now - self._checked_at >= RECHECK_SECONDS:
            self._missing = await missing_key_ids(conn, self._cipher)
            self._checked_at = now
        return self._missing
