"""The write set of a new token set: what connecting, re-authorizing and
refreshing a connection store, written down once.

The ORM paths (connect, re-authorize) apply it to a row object; the refresh
statement (service.tokens.lease), which runs on the driver, uses the SQL
generated from it here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.tokens.schedule import RefreshSchedule
from service.tokens.sealing import ACCESS, REFRESH, TokenSealer
from service.workfront import TokenSet

# The values a token set brings, in the driver's parameter order.
FIELDS = (
    "access_token_enc",
    "refresh_token_enc",
    "expires_at",
    "next_refresh_at",
    "refreshed_at",
    "wid",
)
# Column -> the field it takes.
_FROM_FIELD = {
    "access_token_enc": "access_token_enc",
    "refresh_token_enc": "refresh_token_enc",
    "expires_at": "expires_at",
    "next_refresh_at": "next_refresh_at",
    "last_refreshed_at": "refreshed_at",
    "updated_at": "refreshed_at",
    "wid": "wid",
}
# A new token set clears the failure bookkeeping of earlier refreshes.
_CLEARED: dict[str, Any] = {"refresh_failures": 0, "last_error": None, "last_error_class": None}
# Columns a NULL does not overwrite: Workfront does not always say them again.
_KEPT_WHEN_NULL = frozenset({"wid"})


@dataclass(frozen=True, slots=True)
class TokenColumns:
    """A new token set for one row, sealed, as every writer stores it."""

    access_token_enc: str
    refresh_token_enc: str
    expires_at: datetime
    next_refresh_at: datetime
    refreshed_at: datetime
    wid: str | None

    def values(self) -> dict[str, Any]:
        """Column -> value; the token version moves on beside them (+1, or 1 for a new row)."""
        written = {column: getattr(self, name) for column, name in _FROM_FIELD.items()}
        return {**written, **_CLEARED}

    def arguments(self) -> tuple[Any, ...]:
        """The driver's parameters for ``sql_assignments``, in ``FIELDS`` order."""
        return tuple(getattr(self, name) for name in FIELDS)

    def apply_to(self, row: Any) -> None:
        """Store on an ORM row, moving its token version on."""
        for column, value in self.values().items():
            if value is None and column in _KEPT_WHEN_NULL:
                continue
            setattr(row, column, value)
        row.token_version += 1


def seal_tokens(
    sealer: TokenSealer,
    schedule: RefreshSchedule,
    connection_id: uuid.UUID,
    tokens: TokenSet,
    now: datetime,
    *,
    last_used_at: datetime | None = None,
) -> TokenColumns:
    """``last_used_at``: when the connection was last read, for a refresh the
    refresher started (None: someone is using it now)."""
    return TokenColumns(
        access_token_enc=sealer.seal(connection_id, ACCESS, tokens.access_token),
        refresh_token_enc=sealer.seal(connection_id, REFRESH, tokens.refresh_token),
        expires_at=tokens.expires_at,
        next_refresh_at=schedule.next_refresh_at(
            tokens.expires_at, refreshed_at=now, last_used_at=last_used_at
        ),
        refreshed_at=now,
        wid=tokens.wid or None,
    )


def _literal(value: Any) -> str:
    return "NULL" if value is None else str(int(value))


def sql_assignments(first_parameter: int) -> str:
    """``SET`` list for the driver: ``FIELDS`` are ``$first_parameter…``, the
    cleared columns literals."""
    parameter = {name: f"${n}" for n, name in enumerate(FIELDS, start=first_parameter)}
    parts = ["token_version = token_version + 1"]
    for column, name in _FROM_FIELD.items():
        if column in _KEPT_WHEN_NULL:
            parts.append(f"{column} = coalesce({parameter[name]}, {column})")
        else:
            parts.append(f"{column} = {parameter[name]}")
    parts.extend(f"{column} = {_literal(value)}" for column, value in _CLEARED.items())
    return ", ".join(parts)
