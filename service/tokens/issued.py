"""What the refresh path hands out, what it is asked for, and how it fails."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.tokens.lease import HeldClaim


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A Workfront session as handed to a caller."""

    connection_id: uuid.UUID
    session_id: str = field(repr=False)
    expires_at: datetime
    user_id: str
    # The row's token_version it came from: it moves on with every new session.
    token_version: int
    # When the session was obtained (None: a row from before this was kept).
    refreshed_at: datetime | None
    # The Workfront instance the session is for (service.instances).
    instance: str
    # The API client that brought the connection in (keys limited to their own).
    brought_by: uuid.UUID | None = None
    # expires_at as a POSIX timestamp: the cache's min_ttl check without
    # datetime arithmetic.
    expires_ts: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "expires_ts", self.expires_at.timestamp())

    @property
    def session_version(self) -> str:
        """The opaque version callers see (the ETag's value): names this session
        of this connection, and no other."""
        return str(self.token_version)


@dataclass(frozen=True, slots=True)
class Ask:
    """What a refresh was asked for."""

    seen_version: int  # the token version the caller saw
    min_ttl: float  # seconds of life the caller needs
    forced: bool  # refresh even when the session still has min_ttl left
    # Asked by the refresher, not a caller: not a use of the connection.
    proactive: bool = False
    # The refresher's batch already claimed the row and read it: no statement
    # before the upstream call, while that still holds (Flights.flight).
    held: HeldClaim | None = field(default=None, compare=False)


class ConnectionNotFound(Exception):
    pass


class NeedsReauth(Exception):
    pass


class UpstreamUnavailable(Exception):
    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
