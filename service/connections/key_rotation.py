"""``keys rotate``: re-encrypt every stored value under the primary key."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import func, or_, select

from service.crypto import TokenCipher
from service.db.engine import Database
from service.db.models import Connection
from service.tokens.sealing import ACCESS, REFRESH, TokenSealer

log = logging.getLogger("service.broker")  # pinned: operators filter on it


class RotationStuck(Exception):
    """keys rotate: rows stayed under an old key (a replica still encrypts with it?)."""

    def __init__(self, left: int) -> None:
        super().__init__(left)
        self.left = left


async def reencrypt_all(
    database: Database,
    cipher: TokenCipher,
    *,
    batch_size: int = 500,
    stuck_after_seconds: float = 120.0,
) -> int:
    """Re-encrypt every stored value under the primary key (``keys rotate``).

    Batches of rows, each in its own short transaction, while replicas keep
    serving. Rows locked by a refresh are skipped, not waited for: that
    refresh writes its new tokens under the primary key itself (when its
    replica already has the new key first), and the loop comes back until
    no value under another key is left.
    """
    sealer = TokenSealer(cipher)
    primary = f"{cipher.primary_key_id}:"
    n = len(primary)
    stale = or_(
        func.left(Connection.access_token_enc, n) != primary,
        func.left(Connection.refresh_token_enc, n) != primary,
    )
    loop = asyncio.get_running_loop()
    changed = 0
    stuck_since: float | None = None
    while True:
        async with database() as db, db.begin():
            rows = (
                await db.scalars(
                    select(Connection)
                    .where(stale)
                    .order_by(Connection.id)
                    .limit(batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for row in rows:
                row.access_token_enc = sealer.seal(row.id, ACCESS, sealer.open(row, ACCESS))
                row.refresh_token_enc = sealer.seal(row.id, REFRESH, sealer.open(row, REFRESH))
        changed += len(rows)
        if rows:
            stuck_since = None
            log.info("keys rotate: %d connection(s) re-encrypted so far", changed)
            continue
        async with database() as db:
            left = await db.scalar(select(func.count()).select_from(Connection).where(stale))
        if not left:
            break
        stuck_since = stuck_since if stuck_since is not None else loop.time()
        if loop.time() - stuck_since > stuck_after_seconds:
            raise RotationStuck(left)
        await asyncio.sleep(0.2)  # rows held by refreshes in progress
    return changed
