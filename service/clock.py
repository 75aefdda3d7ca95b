"""The one wall clock of the broker's own rows (UTC, timezone-aware).

Comparisons that must hold across replicas use the database's ``now()``
instead; this is for values a process writes or checks by itself.
"""

from __future__ import annotations

from datetime import UTC, datetime


def now_utc() -> datetime:
    return datetime.now(UTC)
