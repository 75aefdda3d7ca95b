"""Connect links: when one can start a sign-in, and which return URLs a link may carry.

No database: the rules are pure functions of a link's row (a transient
ConnectLink) and the moment; the two async functions are given a session
factory that fails the test if anything reaches for the database.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, cast

import pytest

from service.crypto import lookup_digest
from service.db.engine import Database
from service.db.models import ConnectLink
from service.signin.failures import ASK_FOR_NEW_LINK, CallbackFailure
from service.signin.links import (
    LONGEST_TOKEN,
    LinkState,
    ReturnUrlNotAllowed,
    create_connect_link,
    find_connect_link,
    link_state,
    refuse_unless_live,
    return_url_allowed,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _link(*, expires_in: timedelta, used: bool = False) -> ConnectLink:
    return ConnectLink(
        external_ref="user-4711",
        return_url="https://app.example.com/done",
        expires_at=NOW + expires_in,
        used_at=NOW - timedelta(minutes=1) if used else None,
    )


def _fail(*_: Any, **__: Any) -> NoReturn:
    raise AssertionError("the database was used")


_no_database = cast(Database, _fail)


# --- live, used, expired ---------------------------------------------------------


def test_an_unused_link_before_its_expiry_is_live() -> None:
    assert link_state(_link(expires_in=timedelta(minutes=30)), now=NOW) is LinkState.LIVE
    assert link_state(_link(expires_in=timedelta(seconds=1)), now=NOW) is LinkState.LIVE


def test_a_used_link_is_used_even_before_its_expiry() -> None:
    used = _link(expires_in=timedelta(minutes=30), used=True)
    assert link_state(used, now=NOW) is LinkState.USED


def test_a_used_link_past_its_expiry_says_used_not_expired() -> None:
    # "You are done" is the better news for someone who connected a moment ago.
    used_long_ago = _link(expires_in=-timedelta(hours=1), used=True)
    assert link_state(used_long_ago, now=NOW) is LinkState.USED


def test_a_link_expires_at_its_expiry_moment_not_after() -> None:
    assert link_state(_link(expires_in=timedelta(0)), now=NOW) is LinkState.EXPIRED
    assert link_state(_link(expires_in=-timedelta(seconds=1)), now=NOW) is LinkState.EXPIRED


def test_no_row_is_an_unknown_link() -> None:
    assert link_state(None, now=NOW) is LinkState.UNKNOWN


def test_a_live_link_is_let_through_as_it_is() -> None:
    link = _link(expires_in=timedelta(minutes=5))
    assert refuse_unless_live(link, now=NOW) is link


@pytest.mark.parametrize(
    ("link", "code", "says"),
    [
        (None, "link_unknown", "unknown"),
        (_link(expires_in=timedelta(minutes=5), used=True), "link_used", "already used"),
        (_link(expires_in=timedelta(0)), "link_expired", "expired"),
    ],
    ids=["unknown", "used", "expired"],
)
def test_a_link_that_is_not_live_is_refused_with_no_try_again(
    link: ConnectLink | None, code: str, says: str
) -> None:
    with pytest.raises(CallbackFailure) as refused:
        refuse_unless_live(link, now=NOW)
    failure = refused.value
    assert (failure.status, failure.code) == (400, code)
    assert says in failure.message
    # Trying the same link again cannot help: the page asks for a new link instead.
    assert failure.retryable is False
    assert failure.title == "This connect link cannot be used"
    if code != "link_used":  # a used link first says "you may be done already"
        assert failure.next_step == ASK_FOR_NEW_LINK


# --- the return URL allow-list -----------------------------------------------------

PREFIXES = ["https://app.example.com", "https://intranet.example.org/workfront/"]


@pytest.mark.parametrize(
    "url",
    [
        "https://app.example.com",
        "https://app.example.com/",
        "https://app.example.com/settings/workfront",
        "https://app.example.com?from=broker",
        "https://app.example.com#done",
        "https://intranet.example.org/workfront/",
        "https://intranet.example.org/workfront/people/4711",
    ],
)
def test_a_return_url_at_or_under_a_prefix_is_allowed(url: str) -> None:
    assert return_url_allowed(url, PREFIXES)


@pytest.mark.parametrize(
    "url",
    [
        # A prefix matches at a boundary only.
        "https://app.example.com.evil.net/",
        "https://app.example.community/",
        "https://app.example.com@evil.net/",
        "https://app.example.com:8443/",
        # Under a prefix with a slash, only below it.
        "https://intranet.example.org/workfront",
        "https://intranet.example.org/workfrontier/",
        "https://intranet.example.org/other/",
        # Another scheme or host.
        "http://app.example.com/",
        "https://evil.net/?next=https://app.example.com/",
        "",
        # Inputs urlsplit refuses (fullwidth slash, at-sign or colon in the
        # host under NFKC, an unclosed IPv6 bracket): refused, not a 500.
        "https://app.example.com\uff0fevil",
        "https://app.example.com\uff20evil.net/",
        "https://app.example.com\uff1a443/",
        "https://[app.example.com/",
    ],
)
def test_a_return_url_outside_every_prefix_is_refused(url: str) -> None:
    assert not return_url_allowed(url, PREFIXES)


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)//https://app.example.com", "ftp://app.example.com/", "https:///x"]
)
def test_only_http_and_https_urls_with_a_host_are_allowed(url: str) -> None:
    prefixes = [*PREFIXES, "javascript:", "ftp://app.example.com", "https:///"]
    assert not return_url_allowed(url, prefixes)


def test_no_prefixes_allow_nothing() -> None:
    assert not return_url_allowed("https://app.example.com/", [])


def test_a_plain_http_prefix_allows_plain_http() -> None:
    assert return_url_allowed("http://localhost:3000/back", ["http://localhost:3000"])


async def test_a_link_with_a_return_url_outside_the_list_is_not_stored() -> None:
    with pytest.raises(ReturnUrlNotAllowed):
        await create_connect_link(
            _no_database,
            external_ref="user-4711",
            return_url="https://app.example.com.evil.net/",
            instance="default",
            allowed_return_urls=PREFIXES,
            ttl=timedelta(minutes=30),
            created_by=None,
        )


# --- tokens --------------------------------------------------------------------


def test_only_the_sha256_of_a_token_is_looked_up() -> None:
    token = "x" * 43
    assert lookup_digest(token) == hashlib.sha256(token.encode()).digest()
    assert lookup_digest(token) != lookup_digest(token + "y")


async def test_an_oversized_token_is_unknown_without_a_lookup() -> None:
    assert await find_connect_link(_no_database, "a" * (LONGEST_TOKEN + 1)) is None
