"""Connect links: one-time links an API client makes for one person to connect.

Only the SHA-256 of a link's token is stored. A link is live until it is
used (the callback that stores the connection spends it, see
``ConnectionLifecycle.store_connection``) or until it expires; an attempt it started
keeps pointing at it, so the callback can check it once more.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from urllib.parse import urlsplit

from sqlalchemy import delete, select, update

from service.clock import now_utc
from service.crypto import lookup_digest
from service.db.audit import record_event
from service.db.engine import Database
from service.db.models import ConnectLink
from service.signin.failures import CallbackFailure, FailureCode, refusal

# Longest query value a sign-in accepts: link tokens are 43 characters, codes
# and states shorter than this; a longer value is not looked up (nor hashed).
LONGEST_TOKEN = 2048


@dataclass(frozen=True)
class ClaimedLink:
    """A connect link this callback holds: spent unless released."""

    link: ConnectLink
    claimed_at: datetime


class ReturnUrlNotAllowed(Exception):
    """A return URL outside every BROKER_ALLOWED_RETURN_URLS prefix."""


class LinkState(Enum):
    LIVE = "live"
    UNKNOWN = "unknown"
    USED = "used"
    EXPIRED = "expired"


_REFUSALS: dict[LinkState, FailureCode] = {
    LinkState.UNKNOWN: "link_unknown",
    LinkState.USED: "link_used",
    LinkState.EXPIRED: "link_expired",
}


def link_state(link: ConnectLink | None, *, now: datetime) -> LinkState:
    """Whether a link can still start a sign-in: known, not used, not yet expired."""
    if link is None:
        return LinkState.UNKNOWN
    if link.used_at is not None:
        return LinkState.USED
    if link.expires_at <= now:
        return LinkState.EXPIRED
    return LinkState.LIVE


def return_url_allowed(url: str, prefixes: list[str]) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. a fullwidth solidus or at-sign in the host, an unclosed "["
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    # A prefix must match at a boundary so https://app.example.com does not admit
    # https://app.example.com.evil.net.
    for prefix in prefixes:
        if url == prefix:
            return True
        if url.startswith(prefix) and (prefix.endswith("/") or url[len(prefix)] in "/?#"):
            return True
    return False


@dataclass(frozen=True)
class NewConnectLink:
    id: uuid.UUID
    token: str = field(repr=False)  # the only time it exists in plain text
    expires_at: datetime


async def create_connect_link(
    database: Database,
    *,
    external_ref: str,
    return_url: str,
    instance: str,
    allowed_return_urls: list[str],
    ttl: timedelta,
    created_by: uuid.UUID | None,
) -> NewConnectLink:
    """Store a new link; raises ReturnUrlNotAllowed before storing anything."""
    if not return_url_allowed(return_url, allowed_return_urls):
        raise ReturnUrlNotAllowed
    token = secrets.token_urlsafe(32)
    link_id = uuid.uuid4()
    expires_at = now_utc() + ttl
    async with database() as db, db.begin():
        # Expired links (and, by cascade, their attempts) are removed as new
        # ones are made; no separate job needed.
        await db.execute(
            delete(ConnectLink).where(ConnectLink.expires_at < now_utc() - timedelta(days=1))
        )
        db.add(
            ConnectLink(
                id=link_id,
                token_hash=lookup_digest(token),
                external_ref=external_ref,
                return_url=return_url,
                instance=instance,
                created_by=created_by,
                expires_at=expires_at,
            )
        )
        await record_event(
            db,
            "connect_session.created",
            client_id=created_by,
            connect_session_id=str(link_id),
        )
    return NewConnectLink(id=link_id, token=token, expires_at=expires_at)


async def find_connect_link(database: Database, token: str) -> ConnectLink | None:
    if len(token) > LONGEST_TOKEN:
        return None
    async with database() as db:
        found: ConnectLink | None = await db.scalar(
            select(ConnectLink).where(ConnectLink.token_hash == lookup_digest(token))
        )
    return found


def refuse_unless_live(link: ConnectLink | None, *, now: datetime) -> ConnectLink:
    """The link itself when it is live; else the refusal that says why not."""
    state = link_state(link, now=now)
    if link is None or state is not LinkState.LIVE:
        raise refusal(_REFUSALS[state])
    return link


async def live_connect_link(database: Database, token: str) -> ConnectLink:
    """The live link for ``token``; raises CallbackFailure when unknown, used or expired."""
    return refuse_unless_live(await find_connect_link(database, token), now=now_utc())


async def recheck_connect_link(database: Database, link_id: uuid.UUID) -> ConnectLink:
    """The link an attempt started from, checked again at the callback (before the
    code is exchanged, so a spent link never makes a grant)."""
    async with database() as db:
        link = await db.get(ConnectLink, link_id)
    if link is None:  # there when the attempt started: to the person, it is used up
        raise refusal("link_used")
    return refuse_unless_live(link, now=now_utc())


async def claim_connect_link(database: Database, link_id: uuid.UUID) -> ClaimedLink:
    """Check the attempt's link once more and claim it, before the code is
    exchanged: of two callbacks racing on one link only the first goes on to
    Workfront, so a spent link never makes a grant there."""
    link = await recheck_connect_link(database, link_id)
    now = now_utc()
    async with database() as db, db.begin():
        claimed = await db.scalar(
            update(ConnectLink)
            .where(
                ConnectLink.id == link_id,
                ConnectLink.used_at.is_(None),
                ConnectLink.expires_at > now,
            )
            .values(used_at=now)
            .returning(ConnectLink.id)
        )
    if claimed is None:
        raise refusal("link_spent")
    return ClaimedLink(link=link, claimed_at=now)


async def release_connect_link(database: Database, claimed: ClaimedLink) -> None:
    """The sign-in failed after the claim: the link works again while it lives
    (the failure page's "Try again")."""
    async with database() as db, db.begin():
        await db.execute(
            update(ConnectLink)
            .where(ConnectLink.id == claimed.link.id, ConnectLink.used_at == claimed.claimed_at)
            .values(used_at=None)
        )


async def link_of_failure(
    database: Database, token: str | None, failure: CallbackFailure
) -> tuple[ConnectLink | None, str | None]:
    """The connect link a refused step belongs to, and its token if this browser has it.

    ``token`` is the one the browser brought (its link cookie, or the link in
    the address). Once the attempt is known, its own link wins: a cookie
    left by another flow must not decide where this one starts again.
    """
    link = await find_connect_link(database, token) if token is not None else None
    if failure.attempt_known and (link is None or link.id != failure.link_id):
        token = None
        link = None
        if failure.link_id is not None:
            async with database() as db:
                link = await db.get(ConnectLink, failure.link_id)
    return link, token
