"""What a database error means: PostgreSQL's SQLSTATE, and "the database is away" vs a bug."""

from __future__ import annotations

import asyncpg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

# SQLSTATE classes that mean "the database is away", not "the statement is
# wrong": connection exceptions, operator intervention (shutdown, cannot
# connect now), insufficient resources (too many connections).
_OUTAGE_SQLSTATE_PREFIXES = ("08", "57P", "53")


def sqlstate(exc: BaseException) -> str:
    """PostgreSQL's SQLSTATE of an error, from the driver or wrapped by SQLAlchemy; "" if none."""
    cause = exc.orig if isinstance(exc, DBAPIError) else exc
    return str(getattr(cause, "sqlstate", None) or "")


def is_database_outage(exc: BaseException) -> bool:
    """Whether an exception means PostgreSQL is unreachable (answer 503), not a bug (500)."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeoutError | OSError):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        # Not its client-side errors (DataError, ClientConfigurationError, both
        # ValueErrors): a bad query argument is a bug, not an outage.
        return not isinstance(exc, ValueError)
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, DBAPIError | asyncpg.PostgresError):
        # asyncpg's own: raised by the refresh transaction, which runs on the driver.
        return sqlstate(exc).startswith(_OUTAGE_SQLSTATE_PREFIXES)
    return False


# The classes a database failure arrives as, from SQLAlchemy or from the driver
# (the refresh transaction runs on asyncpg itself).
DATABASE_ERROR_CLASSES: tuple[type[BaseException], ...] = (
    DBAPIError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    PoolTimeoutError,
)
