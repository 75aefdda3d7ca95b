"""If-Match as the forced refresh reads it (service.web.token_answers): no server."""

from __future__ import annotations

import re

import pytest

from service.web.problems import ProblemError
from service.web.token_answers import IF_MATCH_PATTERN, parse_if_match


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
        ('""', {""}),
    ],
)
def test_entity_tags_are_read(header: str | None, versions: set[str] | None) -> None:
    parsed = parse_if_match(header)
    assert parsed == (None if versions is None else frozenset(versions))
    if header is not None:
        assert re.fullmatch(IF_MATCH_PATTERN, header)  # what the OpenAPI document says


@pytest.mark.parametrize(
    "header", ["", "7", '"7', '"7" "8"', '"7",,"8"', '"a b"', '*, "7"', "null"]
)
def test_anything_else_is_refused(header: str) -> None:
    with pytest.raises(ProblemError) as refused:
        parse_if_match(header)
    assert refused.value.status == 422
    assert re.fullmatch(IF_MATCH_PATTERN, header) is None
