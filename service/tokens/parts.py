"""What the refresh path and the connection lifecycle are built from, made once
per process (the lifespan's Runtime) and shared by both."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from service.config import Settings
from service.crypto import TokenCipher
from service.db.engine import Database
from service.tokens.lease import Claims, LeaseOwner
from service.tokens.reads import TokenReads
from service.tokens.schedule import RefreshSchedule
from service.tokens.sealing import TokenSealer
from service.workfront import Workfronts


@dataclass(frozen=True, slots=True)
class TokenParts:
    settings: Settings
    # Autocommit: single-statement reads, and the refresh's statements.
    reader: AsyncEngine
    database: Database
    sealer: TokenSealer
    schedule: RefreshSchedule
    reads: TokenReads
    workfronts: Workfronts
    claims: Claims  # the refresh's claims on rows, as this process

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        reader: AsyncEngine,
        database: Database,
        cipher: TokenCipher,
        workfronts: Workfronts,
        owner: LeaseOwner,
    ) -> TokenParts:
        sealer = TokenSealer(cipher)
        return cls(
            settings=settings,
            reader=reader,
            database=database,
            sealer=sealer,
            schedule=RefreshSchedule(settings),
            reads=TokenReads(settings=settings, reader=reader, sealer=sealer),
            workfronts=workfronts,
            claims=Claims(reader, owner, lease_seconds=claim_lease_seconds(settings)),
        )


def claim_lease_seconds(settings: Settings) -> float:
    """How long a refresh's claim holds at most while its process lives: the
    refresh call's ceiling, storing its answer (up to 2 x the upstream
    timeout) and a margin. A dead process's claims are void at once."""
    return settings.refresh_call_ceiling_seconds + 2 * settings.upstream_timeout_seconds + 30
