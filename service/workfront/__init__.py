"""The only code that talks to Workfront."""

from service.workfront.client import (
    GrantRevokedError,
    TokenSet,
    TransientError,
    WorkfrontClient,
    WorkfrontUser,
)

__all__ = ["GrantRevokedError", "TokenSet", "TransientError", "WorkfrontClient", "WorkfrontUser"]
