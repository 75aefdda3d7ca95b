"""Why a browser step of the sign-in was refused, in words for the person in front of it.

Every refusal has a code (it shows on the page and in the log), an HTTP
status, a title, what happened and what to do next. ``retryable`` says
whether starting the same flow again can help: a spent or expired connect
link cannot be fixed by trying again, so its page asks for a new link.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

START_AGAIN = "Press Try again to start over. It takes less than a minute."
ASK_FOR_NEW_LINK = (
    "Go back to the application that sent you here and ask it for a new connect link."
)

FailureCode = Literal[
    "malformed_callback",
    "state_unknown",
    "state_missing",
    "no_attempt",
    "state_used",
    "state_expired",
    "other_browser",
    "access_denied",
    "workfront_error",
    "no_code",
    "wrong_instance",
    "credentials_rejected",
    "code_refused",
    "workfront_unreachable",
    "link_unknown",
    "link_used",
    "link_spent",
    "link_expired",
]


class CallbackFailure(Exception):
    """A refused browser step; see ``refusal`` for the wording of each code."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        message: str,
        next_step: str,
        *,
        retryable: bool = True,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.title = title
        self.message = message
        self.next_step = next_step
        self.retryable = retryable
        # Filled in once the attempt is known: whether it came from a connect link.
        self.attempt_known = False
        self.link_id: uuid.UUID | None = None


@dataclass(frozen=True)
class _Wording:
    status: int
    title: str
    message: str
    next_step: str
    retryable: bool


_ATTEMPT_TITLE = "The sign-in could not be finished"
_NOT_GRANTED_TITLE = "Access was not granted"
_LINK_TITLE = "This connect link cannot be used"


def _attempt(message: str, next_step: str = START_AGAIN) -> _Wording:
    return _Wording(400, _ATTEMPT_TITLE, message, next_step, retryable=True)


def _link(message: str, next_step: str = ASK_FOR_NEW_LINK) -> _Wording:
    return _Wording(400, _LINK_TITLE, message, next_step, retryable=False)


_WORDING: dict[FailureCode, _Wording] = {
    # The callback's address or the sign-in attempt it should finish.
    "malformed_callback": _attempt("The address Workfront sent you back to is malformed."),
    "state_unknown": _attempt(
        "This sign-in attempt is unknown to the broker, so it cannot be finished."
    ),
    "state_missing": _attempt(
        "Workfront sent you back with no state, so it cannot be matched to a sign-in attempt."
    ),
    "no_attempt": _attempt("This browser has no sign-in attempt in progress."),
    "state_used": _attempt(
        "This sign-in attempt was already used (perhaps the page was reloaded or opened twice)."
    ),
    "state_expired": _attempt(
        "This sign-in attempt expired: a sign-in must be finished within 10 minutes."
    ),
    "other_browser": _attempt(
        "This sign-in attempt was started in another browser, so this one cannot finish it.",
        "Press Try again to start over in this browser.",
    ),
    # What Workfront answered.
    "access_denied": _Wording(
        400,
        _NOT_GRANTED_TITLE,
        "You declined access on the Workfront page, so nothing was connected.",
        "If you meant to connect, press Try again and choose Allow on the Workfront page.",
        retryable=True,
    ),
    "workfront_error": _Wording(
        400,
        _NOT_GRANTED_TITLE,
        "Workfront did not grant access: it reported an error while you were signing in.",
        START_AGAIN,
        retryable=True,
    ),
    "no_code": _attempt("Workfront sent you back without an authorization code."),
    "wrong_instance": _Wording(
        400,
        "That was a different Workfront instance",
        "The sign-in came back from a different Workfront instance than the one "
        "this broker serves ({instance}).",
        "Press Try again and sign in at {instance}.",
        retryable=True,
    ),
    "credentials_rejected": _Wording(
        502,
        "The broker is misconfigured",
        "Workfront refused this broker's app credentials, so your account could not be connected.",
        "Tell the administrator of this broker. Trying again will not help until they fix it.",
        retryable=True,
    ),
    "code_refused": _Wording(
        400,
        "The sign-in took too long",
        "Workfront refused the authorization code: it expired (codes live two minutes) "
        "or was already used.",
        "Press Try again and finish signing in within two minutes.",
        retryable=True,
    ),
    "workfront_unreachable": _Wording(
        502,
        "Workfront is not answering",
        "Workfront could not be reached or failed while connecting your account.",
        "Wait a minute, then press Try again. If it keeps happening, tell your "
        "Workfront administrator.",
        retryable=True,
    ),
    # The connect link the attempt started from.
    "link_unknown": _link("This connect link is unknown. It may have been copied incompletely."),
    "link_used": _link(
        "This connect link was already used. Each link connects one account, once.",
        "If you connected with it a moment ago, you are done: go back to the application. "
        "Otherwise ask the application for a new connect link.",
    ),
    # Shown with code link_used: to the person it is the same outcome.
    "link_spent": _link(
        "This connect link was used in another window at the same moment, or it expired."
    ),
    "link_expired": _link(
        "This connect link expired. Links work for a limited time after the application makes them."
    ),
}

# The code a page and the log show, where it differs from the failure's name.
_SHOWN_CODE: dict[FailureCode, str] = {"link_spent": "link_used"}


def refusal(code: FailureCode, **values: str) -> CallbackFailure:
    """A fresh failure for ``code``; ``values`` fill the wording's placeholders."""
    wording = _WORDING[code]
    return CallbackFailure(
        wording.status,
        _SHOWN_CODE.get(code, code),
        wording.title,
        wording.message.format(**values),
        wording.next_step.format(**values),
        retryable=wording.retryable,
    )


def next_step_without_retry(failure: CallbackFailure) -> str:
    """What to do next when the page has no Try again button.

    Advice to "press Try again" needs the button; without one the only way
    forward is a new link (no link can fix the broker's own credentials).
    """
    if failure.retryable and failure.code != "credentials_rejected":
        return ASK_FOR_NEW_LINK
    return failure.next_step
