"""The library is tested against the real thing: a `serve` process of this
repository's broker, its Workfront emulator, and PostgreSQL, through the
broker's own test fixtures (tests/conftest.py)."""

from tests.conftest import *  # noqa: F403
