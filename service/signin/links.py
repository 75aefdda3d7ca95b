"""Connect links: one-time links an API client makes for one person to connect."""

from __future__ import annotations


class ConnectLinkSpent(Exception):
    """A connect link was used by a concurrent callback first."""
