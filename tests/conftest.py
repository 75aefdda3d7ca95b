"""Shared fixtures: a real PostgreSQL migrated by Alembic, the emulator over real
HTTP, the broker in process. Fixtures only: the helpers they call live in
tests/support, and tests import helpers from there, never from this file.

PostgreSQL comes from BROKER_TEST_DATABASE_URL when set (a fresh database is
created on that server for the run and dropped after), otherwise from an
embedded server the tests start themselves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import pytest

from service.config import Settings
from tests.support import REPO
from tests.support.broker import (
    BrokerHarness,
    make_settings,
    new_encryption_keys,
    running_broker,
    shared_broker,
)
from tests.support.db import migrated_database, postgres_server_url, raw_connection, truncate_all
from tests.support.emulator import Emulator, reset_emulator, serve_emulator

# PostgreSQL -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a server we may create databases on (asyncpg dialect)."""
    with postgres_server_url() as url:
        yield url


@pytest.fixture(scope="session")
async def database_url(pg_server_url: str) -> AsyncIterator[str]:
    """A fresh database for this run, migrated by the real Alembic migrations."""
    async with migrated_database(pg_server_url) as url:
        yield url


@pytest.fixture(scope="session")
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A raw connection for assertions on what is really stored."""
    async with raw_connection(database_url) as conn:
        yield conn


@pytest.fixture
async def clean_db(db: asyncpg.Connection) -> None:
    await truncate_all(db)


# The emulator, over real HTTP in its own thread ---------------------------------


@pytest.fixture(scope="session")
def emulator_url() -> Iterator[str]:
    with serve_emulator() as url:
        yield url


@pytest.fixture
async def emulator(emulator_url: str) -> AsyncIterator[Emulator]:
    async with reset_emulator(emulator_url) as emulator:
        yield emulator


# The broker -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def encryption_keys() -> str:
    return new_encryption_keys()


@pytest.fixture
def settings_for(
    database_url: str, emulator_url: str, encryption_keys: str
) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        return make_settings(database_url, emulator_url, encryption_keys, **overrides)

    return build


@pytest.fixture
async def broker(
    clean_db: None, emulator: Emulator, settings_for: Callable[..., Settings]
) -> AsyncIterator[BrokerHarness]:
    async with running_broker(settings_for(), emulator) as harness:
        yield harness


@pytest.fixture(scope="module")
async def api(
    database_url: str, emulator_url: str, encryption_keys: str
) -> AsyncIterator[BrokerHarness]:
    """One broker for the whole module, for tests that only compare before/after.

    Starting a broker costs ~0.1 s (TLS contexts, engine); the hundreds of
    stateless auth and bad-input cases share this one instead of ``broker``.
    """
    settings = make_settings(database_url, emulator_url, encryption_keys)
    async with shared_broker(settings, emulator_url) as harness:
        yield harness


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Point a person at the browser tests' screenshots, when a run made some."""
    ran_browser_tests = any(
        "test_browser_e2e" in getattr(report, "nodeid", "")
        for reports in terminalreporter.stats.values()
        for report in reports
    )
    shots = REPO / "test-artifacts" / "screenshots"
    if ran_browser_tests and shots.is_dir():
        terminalreporter.write_line(f"browser screenshots: {shots}")
