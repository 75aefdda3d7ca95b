"""The tests' helpers, as a library: tests and the fixtures of tests/conftest.py
import them from here (never from conftest.py).

- ``db``: PostgreSQL for the run (embedded, or BROKER_TEST_DATABASE_URL's
  server), a fresh migrated database, raw connections, row helpers
- ``emulator``: the Workfront emulator over real HTTP, and its switches
- ``broker``: the broker app in process, its settings, API keys, the browser flow
- ``api``: the /v1 routes and their problem answers, as the API tests see them
- ``processes``: real ``python -m service`` processes, free ports, their logs

Here: who the tests are to the broker and the emulator, and where the checkout is.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BROKER_BASE = "http://broker.test"
CLIENT_ID = "test-client"
CLIENT_SECRET = "test-client-secret-value-0123456789"
ADMIN_KEY = "admin-bootstrap-key-" + "x" * 24
