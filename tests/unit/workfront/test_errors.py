"""Which typed error an upstream answer stands for (service.workfront.errors).

No database, no network: answers are given as status, headers and body, the
headers as the case-insensitive mapping aiohttp hands the client.
"""

from __future__ import annotations

import json
import random
import re
import secrets

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from service.workfront.errors import (
    ClientCredentialsRejected,
    GrantRevokedError,
    SessionRejectedError,
    TransientError,
    WorkfrontError,
    names_invalid_client,
    redact,
    retry_after,
    session_lookup_error,
    token_endpoint_error,
)

# Token-like: a run of 20 or more characters that tokens are made of.
TOKENISH = re.compile(r"[A-Za-z0-9_\-.~+/=]{20,}")
PREFIX = "token endpoint answered 400: "


def headers(**values: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in values.items()}))


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def classify(
    status: int,
    raw: bytes = b"",
    hdrs: CIMultiDictProxy[str] | None = None,
    secrets: tuple[str | None, ...] = (),
) -> WorkfrontError | None:
    return token_endpoint_error(status, hdrs or headers(), raw, secrets=secrets)


# -- token endpoint: status ------------------------------------------------------------


def test_200_is_no_error_whatever_the_body() -> None:
    assert classify(200, body(error="invalid_client")) is None
    assert classify(200, b"not json") is None


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599, 408, 429])
def test_5xx_408_429_are_transient(status: int) -> None:
    error = classify(status, body(error="invalid_grant"))
    assert type(error) is TransientError
    assert error.status == status
    assert error.detail == f"token endpoint answered {status}"
    assert error.retry_after is None


def test_invalid_client_on_a_5xx_is_still_plainly_transient() -> None:
    error = classify(503, body(error="invalid_client"))
    assert type(error) is TransientError


@pytest.mark.parametrize("status", [201, 204, 301, 302, 304, 307])
def test_other_non_200_answers_are_transient(status: int) -> None:
    # A redirect is never followed: the answer is not a token, the grant is intact.
    error = classify(status, body(error="invalid_grant"), headers(Retry_After="5"))
    assert type(error) is TransientError
    assert error.status == status
    assert error.detail == f"token endpoint answered {status}"
    assert error.retry_after is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422, 499])
@pytest.mark.parametrize(
    "raw",
    [
        body(error="invalid_grant", error_description="Refresh token reused."),
        body(error="unauthorized_client"),
        body(error={"error": "invalid_client"}),
        json.dumps(["invalid_client"]).encode(),
        b"<html>Bad Request</html>",
        b"",
        b"\xff\xfe\x00 not utf-8",
    ],
)
def test_other_4xx_revoke_the_grant(status: int, raw: bytes) -> None:
    error = classify(status, raw)
    assert type(error) is GrantRevokedError
    assert not isinstance(error, TransientError)
    assert error.status == status
    assert error.detail.startswith(f"token endpoint answered {status}: ")


def test_grant_revoked_detail_quotes_the_body_for_diagnosis() -> None:
    raw = body(error="invalid_grant", error_description="Refresh token was revoked.")
    error = classify(400, raw)
    assert error is not None
    assert error.detail == PREFIX + raw.decode()


# -- token endpoint: invalid_client ----------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403])
def test_invalid_client_is_a_configuration_problem_not_a_revoked_grant(status: int) -> None:
    raw = body(error="invalid_client", error_description="Client authentication failed.")
    error = classify(status, raw, headers(Retry_After="30"), secrets=("the-code", "secret"))
    assert type(error) is ClientCredentialsRejected
    assert isinstance(error, TransientError)  # retried with backoff, tokens kept
    assert not isinstance(error, GrantRevokedError)
    assert error.status == status
    assert error.detail == f"token endpoint refused the client credentials ({status})"
    assert error.retry_after is None


def test_names_invalid_client() -> None:
    assert names_invalid_client(body(error="invalid_client"))
    # The stdlib parser: NaN, which Workfront might send, does not hide the error.
    assert names_invalid_client(b'{"error": "invalid_client", "retry": NaN}')
    assert not names_invalid_client(body(error="invalid_grant"))
    assert not names_invalid_client(body(error="INVALID_CLIENT"))
    assert not names_invalid_client(body(error_description="invalid_client"))
    assert not names_invalid_client(b'["invalid_client"]')
    assert not names_invalid_client(b"invalid_client")
    assert not names_invalid_client(b"\xff")
    assert not names_invalid_client(b"")


# -- Retry-After -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (" 7 ", 7.0),
        ("-5", 0.0),  # never negative
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),  # HTTP dates are not honoured
        ("soon", None),
        ("", None),
    ],
)
def test_retry_after_of_a_transient_answer(value: str, seconds: float | None) -> None:
    assert retry_after(headers(Retry_After=value)) == seconds
    for status in (429, 503):
        error = classify(status, b"", headers(Retry_After=value))
        assert isinstance(error, TransientError)
        assert error.retry_after == seconds


def test_retry_after_absent_and_any_case() -> None:
    assert retry_after(headers()) is None
    assert retry_after(headers(Content_Type="application/json")) is None
    assert retry_after(CIMultiDictProxy(CIMultiDict({"RETRY-AFTER": "3"}))) == 3.0
    assert retry_after(CIMultiDictProxy(CIMultiDict({"retry-after": "4"}))) == 4.0


# -- redaction -------------------------------------------------------------------------

REFRESH_TOKEN = secrets.token_urlsafe(32)
SESSION_ID = secrets.token_hex(16)
CLIENT_SECRET = "test-client-secret-value-0123456789"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
SHORT_CODE = "c0de-42"  # shorter than a token-like run: only the secrets list removes it


def test_grant_revoked_detail_carries_no_secret_and_nothing_token_like() -> None:
    raw = body(
        error="invalid_grant",
        error_description=f"Refresh token {REFRESH_TOKEN} unknown for code {SHORT_CODE}",
        client_secret=CLIENT_SECRET,
        session=SESSION_ID,
        jwt=f"Bearer {JWT}",
    )
    error = classify(400, raw, secrets=(SHORT_CODE, CLIENT_SECRET))
    assert isinstance(error, GrantRevokedError)
    for secret in (REFRESH_TOKEN, SESSION_ID, CLIENT_SECRET, JWT, SHORT_CODE):
        assert secret not in error.detail
    assert TOKENISH.search(error.detail) is None
    assert "[redacted]" in error.detail
    assert "invalid_grant" in error.detail  # what is left still tells what happened


def test_secrets_are_removed_before_the_body_is_cut_short() -> None:
    # A secret straddling the cut would otherwise leave its first half behind.
    raw = ("x " * 140 + SHORT_CODE * 5).encode()
    error = classify(401, raw, secrets=(SHORT_CODE,))
    assert error is not None
    assert "c0de" not in error.detail


def test_detail_is_bounded() -> None:
    error = classify(400, ("word " * 10_000).encode())
    assert error is not None
    assert error.detail == PREFIX + ("word " * 60)
    assert len(redact("a b " * 1000)) == 300


def test_redact_ignores_missing_secrets() -> None:
    assert redact("nothing to hide", None, "") == "nothing to hide"
    assert redact(f"token: {REFRESH_TOKEN};", None) == "token: [redacted];"
    assert redact(f"the secret is {SHORT_CODE}", SHORT_CODE) == "the secret is [redacted]"


def test_no_body_leaves_a_token_like_run_in_the_detail() -> None:
    alphabet = "Aa9_-.~+/=" + " \"':,{}\n" + "é€"
    rng = random.Random(20240601)
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 600)))
        error = classify(400, text.encode())
        assert error is not None
        assert TOKENISH.search(error.detail) is None, text
        assert len(error.detail) <= len(PREFIX) + 300


# -- session lookup --------------------------------------------------------------------


def test_session_lookup_classification() -> None:
    assert session_lookup_error(200) is None
    rejected = session_lookup_error(401)
    assert type(rejected) is SessionRejectedError
    assert rejected.status == 401
    assert rejected.detail == "session lookup answered 401"
    for status in (302, 400, 403, 404, 429, 500, 503):
        error = session_lookup_error(status)
        assert type(error) is TransientError, status
        assert error.status == status
        assert error.detail == f"session lookup answered {status}"
