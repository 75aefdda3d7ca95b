"""Finishing a sign-in: what the callback does once Workfront sends the browser back.

In order: consume the sign-in attempt (single use, this browser's), check
what Workfront reported and that the callback came from the configured
instance, check the attempt's connect link once more and claim it (so of two
callbacks racing on one link only one reaches Workfront), exchange the code
and look up the user, then store the connection; a failure after the claim
releases the link for another try. Every
refusal is a CallbackFailure (see service.signin.failures) and stores
nothing. The code and the client secret only ever go to the configured
instance, never to a host derived from the callback's ``domain``/``lane``.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.signin.attempts import Attempt, consume_attempt
from service.signin.failures import CallbackFailure, refusal
from service.signin.links import ClaimedLink, claim_connect_link, release_connect_link
from service.workfront import (
    ClientCredentialsRejected,
    GrantRevokedError,
    SessionRejectedError,
    TokenSet,
    TransientError,
    WorkfrontError,
    WorkfrontUser,
)

if TYPE_CHECKING:
    from service.runtime import Runtime

log = logging.getLogger("service.routes.oauth")  # pinned: operators filter on it


@dataclass(frozen=True)
class Connected:
    connection_id: uuid.UUID
    created: bool  # False: an existing connection was re-authorized
    return_url: str | None  # the connect link's, when the attempt came from one


async def finish_signin(
    runtime: Runtime,
    *,
    browser: str | None,
    latest_state: str | None,
    code: str | None,
    state: str | None,
    domain: str | None,
    lane: str | None,
    error: str | None,
) -> Connected:
    """Connect the user a callback names; ``browser`` is the binding cookie's
    value, ``latest_state`` the state cookie's (cookie-only binding)."""
    attempt = await consume_attempt(
        runtime.database,
        runtime.state_signer,
        state=state,
        browser=browser,
        latest_state=latest_state,
        require_state=runtime.settings.require_state,
        pkce_for=lambda name: runtime.settings.instances[name].pkce,
    )
    try:
        return await _connect(runtime, attempt, code=code, domain=domain, lane=lane, error=error)
    except CallbackFailure as failure:
        failure.attempt_known = True
        failure.link_id = attempt.connect_session_id
        raise


async def _connect(
    runtime: Runtime,
    attempt: Attempt,
    *,
    code: str | None,
    domain: str | None,
    lane: str | None,
    error: str | None,
) -> Connected:
    instance = runtime.settings.instances[attempt.instance]
    if error is not None:
        raise refusal("access_denied" if error == "access_denied" else "workfront_error")
    if not code:
        raise refusal("no_code")
    expected = instance.expected_domain_lane()
    if expected is not None and (domain, lane) != expected:
        raise refusal("wrong_instance", instance=instance.host)
    claimed: ClaimedLink | None = None
    if attempt.connect_session_id is not None:
        claimed = await claim_connect_link(runtime.database, attempt.connect_session_id)
    link = claimed.link if claimed else None
    try:
        tokens, user = await _exchange(runtime, attempt, code)
        connection_id, created = await runtime.connections.store_connection(
            instance=instance.name,
            user=user,
            tokens=tokens,
            external_ref=link.external_ref if link else None,
            brought_by=link.created_by if link else None,
        )
    except Exception:
        if claimed is not None:
            with contextlib.suppress(Exception):  # the failure itself is what the caller hears
                await release_connect_link(runtime.database, claimed)
        raise
    return Connected(connection_id, created, link.return_url if link else None)


async def _exchange(
    runtime: Runtime, attempt: Attempt, code: str
) -> tuple[TokenSet, WorkfrontUser]:
    """The code's tokens, and whom they belong to."""
    # The code and the app's secret go to the attempt's instance only.
    workfront = runtime.workfronts[attempt.instance]
    try:
        tokens = await workfront.exchange_code(code, code_verifier=attempt.code_verifier)
        user = await workfront.get_user(tokens.access_token)
    except ClientCredentialsRejected:
        raise refusal("credentials_rejected") from None
    except GrantRevokedError:
        raise refusal("code_refused") from None
    except (TransientError, SessionRejectedError, WorkfrontError) as exc:
        log.warning("callback: Workfront failed: %s", exc.detail)
        raise refusal("workfront_unreachable") from None
    return tokens, user
