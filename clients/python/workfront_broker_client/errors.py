"""What the broker can answer instead of a session."""

from __future__ import annotations


class BrokerError(Exception):
    """The broker did not hand out a session (or a request could not be retried)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NeedsReauth(BrokerError):
    """The broker's 409: the Workfront user must connect again. Never retried."""

    def __init__(self, connection_id: str) -> None:
        super().__init__(
            f"connection {connection_id} needs re-authorization: the user must connect again",
            status=409,
        )
        self.connection_id = connection_id


class BrokerUnavailable(BrokerError):
    """The broker's 503 (Workfront unreachable and no usable session), or the
    broker itself unreachable. ``retry_after``: seconds, when the broker said."""

    def __init__(self, message: str, *, retry_after: float | None, status: int | None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


def not_replayable(method: str, path: str) -> BrokerError:
    """A request Workfront rejected whose body (a stream) cannot be sent again."""
    return BrokerError(
        f"Workfront rejected the session for {method} {path}; a fresh one is ready, but"
        " the request body (a stream) cannot be sent again: send it again"
    )
