"""Sign-in attempts: one browser's pending authorization at Workfront.

Starting one stores nothing: the ``state`` is signed (service.signin.states)
and carries what the callback needs, bound to the browser that started it by
a secret the browser keeps in a cookie; with PKCE on, the code verifier is
derived from the state. A callback that passes every check records the state
as used (one row, kept until the state would have expired anyway), so a
state is single-use, and an unauthenticated flood of starts fills no table.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert

from service.clock import now_utc
from service.crypto import lookup_digest
from service.db.engine import Database
from service.db.models import SigninAttempt
from service.signin.failures import refusal
from service.signin.states import StateSigner
from service.workfront import pkce_challenge

if TYPE_CHECKING:
    from service.runtime import Runtime


@dataclass(frozen=True)
class StartedAttempt:
    browser: str = field(repr=False)  # the binding secret, for the browser's cookie
    state: str = field(repr=False)  # for the state cookie of cookie-only binding
    # Workfront's authorize page, with this attempt's state.
    authorize_url: str = field(repr=False)


@dataclass(frozen=True)
class Attempt:
    """A sign-in attempt its callback consumed."""

    id: uuid.UUID  # the row recording its state as used
    connect_session_id: uuid.UUID | None  # the connect link it was started from
    instance: str  # the instance it was started for
    code_verifier: str | None = field(repr=False)  # PKCE, when on


def start_attempt(
    runtime: Runtime, *, browser_cookie: str | None, link_id: uuid.UUID | None, instance: str
) -> StartedAttempt:
    """A new attempt for the browser whose binding cookie is ``browser_cookie``
    (None: it has none yet), started from the connect link ``link_id`` if any,
    on ``instance`` (a configured one: fixed for the attempt from here on).

    One binding secret per browser, shared by every attempt it starts: a second
    tab must not orphan the first one's attempt. A cookie is kept only when the
    broker issued it: a value planted in the browser (session fixation) is
    replaced by a new one, never adopted.
    """
    signer = runtime.state_signer
    browser = browser_cookie
    if browser is None or not signer.issued_browser_cookie(browser):
        browser = signer.new_browser_cookie()
    new = signer.new_state(browser=browser, link_id=link_id, instance=instance)
    workfront = runtime.workfronts[instance]
    location = workfront.authorize_url(
        state=new.state,
        code_challenge=pkce_challenge(new.code_verifier) if workfront.instance.pkce else None,
    )
    return StartedAttempt(browser=browser, state=new.state, authorize_url=location)


async def consume_attempt(
    database: Database,
    signer: StateSigner,
    *,
    state: str | None,
    browser: str | None,
    latest_state: str | None,
    require_state: bool,
    pkce_for: Callable[[str], bool],
) -> Attempt:
    """Check the callback's state against this browser, and record it as used.

    Raises CallbackFailure when it is forged, expired, used, or was started in
    another browser. Without ``require_state`` a callback with no state
    finishes the browser's latest attempt (``latest_state``, from its cookie:
    cookie-only binding, for an instance shown not to echo state).
    """
    if not state:
        if require_state:
            raise refusal("state_missing")
        if not browser or not latest_state:
            raise refusal("no_attempt")
        state = latest_state
    verified = signer.verify(state, browser=browser)
    if verified is None:
        raise refusal("state_unknown")
    if verified.instance is None:
        # Signed by us for an instance no longer configured.
        raise refusal("state_unknown")
    now = now_utc()
    expires_at = datetime.fromtimestamp(verified.issued + signer.lifetime_seconds, UTC)
    if expires_at <= now:
        raise refusal("state_expired")
    if not browser or not verified.bound_to_browser:
        raise refusal("other_browser")
    attempt_id = uuid.uuid4()
    async with database() as db, db.begin():
        used = await db.scalar(
            insert(SigninAttempt)
            .values(
                id=attempt_id,
                state_hash=lookup_digest(state),
                browser_hash=lookup_digest(browser),
                expires_at=expires_at,
                used_at=now,
            )
            .on_conflict_do_nothing(index_elements=["state_hash"])
            .returning(SigninAttempt.id)
        )
        if used is None:
            raise refusal("state_used")
        # Records of states that have expired anyway: nothing left to refuse.
        await db.execute(delete(SigninAttempt).where(SigninAttempt.expires_at < now))
    return Attempt(
        id=attempt_id,
        connect_session_id=verified.link_id,
        instance=verified.instance,
        code_verifier=verified.code_verifier if pkce_for(verified.instance) else None,
    )
