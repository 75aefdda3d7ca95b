"""If-Match as the forced refresh reads it (service.web.token_answers): no server."""

from __future__ import annotations

import pytest

from service.web.token_answers import parse_if_match


@pytest.mark.parametrize(
    ("header", "versions"),
    [
        (None, None),
        ("*", None),
        (" * ", None),
        ('"7"', {"7"}),
        ('"7", "8"', {"7", "8"}),
        ('"7","8"', {"7", "8"}),
        ('W/"7"', set()),  # If-Match compares strongly: a weak tag never matches
        ('W/"7", "8"', {"8"}),
        ("7", {"7"}),  # the quotes dropped by a client: still version 7
        ('"7', {'"7'}),  # names no session the broker issued
        ("null", {"null"}),
        ("", {""}),
    ],
)
def test_entity_tags_are_read(header: str | None, versions: set[str] | None) -> None:
    assert parse_if_match(header) == (None if versions is None else frozenset(versions))
