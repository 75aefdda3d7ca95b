"""Engine and session factory; the lifespan owns them, nothing here is global."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.sql.base import Executable

# Opens a database transaction scope (SQLAlchemy's AsyncSession, named ``db``
# in code: "session" means the Workfront session only).
Database = async_sessionmaker[AsyncSession]


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        url,
        pool_size=pool_size,
        # No overflow: an overflow connection is opened for one request and
        # closed after it, and that churn dominates a hot read path.
        max_overflow=0,
        # No pre-ping: it costs a round trip on every checkout of the hot
        # token path. A connection that died with the server fails once, is
        # invalidated by SQLAlchemy (that request answers 503), and the pool
        # reconnects on the next checkout.
        pool_pre_ping=False,
        pool_timeout=10,
        # Recycle now and then so connections behind a proxy or failover do
        # not live forever.
        pool_recycle=1800,
    )


async def read_one(
    engine: AsyncEngine, statement: Executable, params: dict[str, Any] | None = None
) -> tuple[Any, ...] | None:
    """One row from a single-statement read, retried once on a dead pooled connection.

    Without pre-ping, a pooled connection can have died (server restart, idle
    timeout, a proxy); SQLAlchemy marks it invalidated, so one retry on a
    fresh connection tells a stale connection from a real outage.
    """
    for attempt in (1, 2):
        try:
            async with engine.connect() as conn:
                row = (await conn.execute(statement, params or {})).one_or_none()
            return None if row is None else tuple(row)
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
    return None  # unreachable: the second attempt returns or raises


def autocommit(engine: AsyncEngine) -> AsyncEngine:
    """The same pool without BEGIN/ROLLBACK round trips, for single-statement reads."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def make_database(engine: AsyncEngine) -> Database:
    return async_sessionmaker(engine, expire_on_commit=False)


async def read_all(
    engine: AsyncEngine, statement: Executable, params: dict[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """All rows of a single-statement read, retried once like ``read_one``."""
    for attempt in (1, 2):
        try:
            async with engine.connect() as conn:
                return [tuple(row) for row in await conn.execute(statement, params or {})]
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
    return []  # unreachable: the second attempt returns or raises
