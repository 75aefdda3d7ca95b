"""Tokens at rest: sealed per row and column, opened only where they are used.

Each value is bound to its row and column (associated data), so a ciphertext
copied to another row or column does not decrypt.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Protocol

from service.crypto import TokenCipher, row_aad
from service.tokens.issued import IssuedToken

ACCESS = "access_token"
REFRESH = "refresh_token"


class SealedRow(Protocol):
    """A connection row as read (ORM object or the refresh's locked row)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def access_token_enc(self) -> str: ...
    @property
    def refresh_token_enc(self) -> str: ...
    @property
    def expires_at(self) -> datetime: ...
    @property
    def user_id(self) -> str: ...
    @property
    def token_version(self) -> int: ...
    @property
    def last_refreshed_at(self) -> datetime | None: ...
    @property
    def instance(self) -> str: ...
    @property
    def brought_by(self) -> uuid.UUID | None: ...


class TokenSealer:
    def __init__(self, cipher: TokenCipher) -> None:
        self._cipher = cipher

    def seal(self, connection_id: uuid.UUID, column: str, value: str) -> str:
        return self._cipher.encrypt(value, aad=row_aad("connections", connection_id, column))

    def open(self, row: SealedRow, column: str) -> str:
        stored = row.access_token_enc if column == ACCESS else row.refresh_token_enc
        return self._cipher.decrypt(stored, aad=row_aad("connections", row.id, column))

    def issued(self, row: SealedRow) -> IssuedToken:
        """The row's session as handed out."""
        return self.issued_from(
            row.id,
            row.access_token_enc,
            row.expires_at,
            row.user_id,
            row.token_version,
            row.last_refreshed_at,
            row.instance,
            row.brought_by,
        )

    def issued_from(
        self,
        connection_id: uuid.UUID,
        sealed: str,
        expires_at: datetime,
        user_id: str,
        version: int,
        refreshed_at: datetime | None,
        instance: str,
        brought_by: uuid.UUID | None,
    ) -> IssuedToken:
        """A session from the columns of a row read without the ORM."""
        return IssuedToken(
            connection_id=connection_id,
            session_id=self._cipher.decrypt(
                sealed, aad=row_aad("connections", connection_id, ACCESS)
            ),
            expires_at=expires_at,
            user_id=user_id,
            token_version=version,
            refreshed_at=refreshed_at,
            instance=instance,
            brought_by=brought_by,
        )
