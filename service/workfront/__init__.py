"""Workfront: the only code that talks to the instance.

- ``client``: ``WorkfrontClient``'s calls (authorize URL, code exchange,
  refresh, session lookup, logout) and what they return;
- ``errors``: the typed failures and the classification of an answer into them;
- ``http``: the aiohttp session (TLS trust, proxy, timeouts, limits);
- ``protocol``: the wire facts the emulator shares (paths, PKCE, size bounds).
"""

from service.workfront.client import TokenSet, WorkfrontClient, Workfronts, WorkfrontUser
from service.workfront.errors import (
    ClientCredentialsRejected,
    GrantRevokedError,
    SessionRejectedError,
    TransientError,
    WorkfrontError,
)
from service.workfront.protocol import (
    AUTHORIZE_PATH,
    TOKEN_PATH,
    pkce_challenge,
)

__all__ = [
    "AUTHORIZE_PATH",
    "TOKEN_PATH",
    "ClientCredentialsRejected",
    "GrantRevokedError",
    "SessionRejectedError",
    "TokenSet",
    "TransientError",
    "WorkfrontClient",
    "WorkfrontError",
    "WorkfrontUser",
    "Workfronts",
    "pkce_challenge",
]
