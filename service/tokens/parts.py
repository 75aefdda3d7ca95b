"""What the refresh path and the connection lifecycle are built from, made once
per process (the lifespan's Runtime) and shared by both."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from service.config import Settings
from service.crypto import TokenCipher
from service.db.engine import Database
from service.tokens.reads import TokenReads
from service.tokens.schedule import RefreshSchedule
from service.tokens.sealing import TokenSealer
from service.workfront import WorkfrontClient


@dataclass(frozen=True, slots=True)
class TokenParts:
    settings: Settings
    # Autocommit: single-statement reads, and the refresh transaction (which opens its own).
    reader: AsyncEngine
    database: Database
    sealer: TokenSealer
    schedule: RefreshSchedule
    reads: TokenReads
    workfront: WorkfrontClient

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        reader: AsyncEngine,
        database: Database,
        cipher: TokenCipher,
        workfront: WorkfrontClient,
    ) -> TokenParts:
        sealer = TokenSealer(cipher)
        return cls(
            settings=settings,
            reader=reader,
            database=database,
            sealer=sealer,
            schedule=RefreshSchedule(settings),
            reads=TokenReads(settings=settings, reader=reader, sealer=sealer),
            workfront=workfront,
        )
