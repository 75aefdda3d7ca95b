"""API keys and scopes.

Keys are ``wtb_`` + 43 URL-safe characters (256 random bits); only their
SHA-256 is stored, with a short non-secret hint. The admin scope implies
every other scope.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Literal, get_args

KEY_PREFIX = "wtb_"
Scope = Literal["tokens:read", "connections:read", "connections:write", "workfront:proxy", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
ADMIN: Scope = "admin"


def granted_scopes(held: Iterable[str]) -> frozenset[str]:
    """Every scope a key holding ``held`` may act under: admin implies all the others."""
    granted = frozenset(held)
    return granted | frozenset(SCOPES) if ADMIN in granted else granted


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hint(key: str) -> str:
    """A short, non-secret label an operator can match against (prefix + 4 chars)."""
    return key[: len(KEY_PREFIX) + 4]
