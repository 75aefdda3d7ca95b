"""Sign-in attempts: one browser's pending authorization at Workfront.

The ``state`` is single-use, stored only as a SHA-256 hash with a 10-minute
expiry, and bound to the browser that started the attempt by a secret it
keeps in a cookie (also stored hashed). With PKCE on, the code verifier is
stored sealed with the cipher, bound to the attempt's row.
"""

from __future__ import annotations

import hmac
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.clock import now_utc
from service.crypto import TokenCipher, lookup_digest, row_aad
from service.db.engine import Database
from service.db.models import SigninAttempt
from service.signin.failures import refusal
from service.workfront import pkce_challenge

if TYPE_CHECKING:
    from service.runtime import Runtime

ATTEMPT_TTL = timedelta(minutes=10)
_BROWSER_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)


def _verifier_aad(attempt_id: uuid.UUID) -> bytes:
    return row_aad("authorizations", attempt_id, "code_verifier")


async def _browser_secret(db: AsyncSession, cookie: str | None, now: datetime) -> str:
    """The secret that binds attempts to this browser, from its cookie if any.

    One per browser, shared by every attempt it starts: a second tab must not
    orphan the first one's attempt. A cookie is kept only when the broker issued
    it, i.e. a live attempt is bound to it: a value planted in the browser
    (session fixation) is replaced by a new one, never adopted.
    """
    if cookie is not None and _BROWSER_SECRET.fullmatch(cookie):
        issued = await db.scalar(
            select(SigninAttempt.id)
            .where(
                SigninAttempt.browser_hash == lookup_digest(cookie),
                SigninAttempt.expires_at > now,
            )
            .limit(1)
        )
        if issued is not None:
            return cookie
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class StartedAttempt:
    browser: str = field(repr=False)  # the binding secret, for the browser's cookie
    # Workfront's authorize page, with this attempt's state.
    authorize_url: str = field(repr=False)


async def start_attempt(
    runtime: Runtime, *, browser_cookie: str | None, link_id: uuid.UUID | None
) -> StartedAttempt:
    """Store a new attempt for the browser whose binding cookie is ``browser_cookie``
    (None: it has none yet), started from the connect link ``link_id`` if any."""
    state = secrets.token_urlsafe(32)  # 256 bits
    attempt_id = uuid.uuid4()
    verifier = secrets.token_urlsafe(48) if runtime.settings.pkce else None
    now = now_utc()
    async with runtime.database() as db, db.begin():
        browser = await _browser_secret(db, browser_cookie, now)
        # Opportunistic clean-up keeps the table small without a separate job.
        await db.execute(
            delete(SigninAttempt).where(SigninAttempt.expires_at < now - timedelta(days=1))
        )
        db.add(
            SigninAttempt(
                id=attempt_id,
                state_hash=lookup_digest(state),
                browser_hash=lookup_digest(browser),
                code_verifier_enc=(
                    runtime.cipher.encrypt(verifier, aad=_verifier_aad(attempt_id))
                    if verifier
                    else None
                ),
                connect_session_id=link_id,
                expires_at=now + ATTEMPT_TTL,
            )
        )
    location = runtime.workfront.authorize_url(
        state=state, code_challenge=pkce_challenge(verifier) if verifier else None
    )
    return StartedAttempt(browser=browser, authorize_url=location)


def code_verifier(cipher: TokenCipher, attempt: SigninAttempt) -> str | None:
    """The attempt's PKCE verifier in plain text, or None when it was started without."""
    if attempt.code_verifier_enc is None:
        return None
    return cipher.decrypt(attempt.code_verifier_enc, aad=_verifier_aad(attempt.id))


async def consume_attempt(
    database: Database, *, state: str | None, browser: str | None, require_state: bool
) -> SigninAttempt:
    """Find the attempt for this state and browser, and mark it used (single use).

    Raises CallbackFailure when there is none, or it is used, expired, or was
    started in another browser. Without ``require_state`` a callback with no
    state finishes the browser's newest unused attempt (cookie-only binding,
    for an instance shown not to echo state).
    """
    now = now_utc()
    async with database() as db, db.begin():
        if state:
            attempt = await db.scalar(
                select(SigninAttempt)
                .where(SigninAttempt.state_hash == lookup_digest(state))
                .with_for_update()
            )
            if attempt is None:
                raise refusal("state_unknown")
        elif require_state:
            raise refusal("state_missing")
        else:
            if not browser:
                raise refusal("no_attempt")
            attempt = await db.scalar(
                select(SigninAttempt)
                .where(
                    SigninAttempt.browser_hash == lookup_digest(browser),
                    SigninAttempt.used_at.is_(None),
                )
                .order_by(SigninAttempt.created_at.desc())
                .limit(1)
                .with_for_update()
            )
            if attempt is None:
                raise refusal("no_attempt")
        if attempt.used_at is not None:
            raise refusal("state_used")
        if attempt.expires_at <= now:
            raise refusal("state_expired")
        if not browser or not hmac.compare_digest(lookup_digest(browser), attempt.browser_hash):
            raise refusal("other_browser")
        await db.execute(
            update(SigninAttempt).where(SigninAttempt.id == attempt.id).values(used_at=now)
        )
    return attempt
