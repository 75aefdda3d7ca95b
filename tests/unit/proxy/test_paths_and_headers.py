"""Which proxied paths may leave, and what crosses in each direction."""

from __future__ import annotations

import pytest

from service.proxy.headers import to_caller, to_workfront
from service.proxy.paths import upstream_rest
from service.workfront.passthrough import names_dead_session


@pytest.mark.parametrize(
    "rest",
    [
        "v21.0/proj/search",
        "v21.0/proj/4c78/tasks",
        "v21.0/task/search",
        "v21.0/proj/search%3Fname",  # an escaped character that is not a separator
        "upload",
        "v21.0/user/search:x",
    ],
)
def test_plain_api_paths_go_as_sent(rest: str) -> None:
    assert upstream_rest(rest) == rest


@pytest.mark.parametrize(
    "rest",
    [
        "",
        "..",
        "../x",
        "v21.0/../../x",
        "v21.0/./proj",
        "%2e%2e/x",
        "%2E%2E/x",
        ".%2e/x",
        "%252e%252e/x",  # twice encoded
        "v21.0//proj",
        "/evil.example/x",
        "http://evil.example/x",
        "v21.0\\..\\x",
        "v21.0%5c..",
        "v21.0%2fproj",
        "v21.0%2Fproj",
        "v21.0/proj%00",
        "v21.0/proj%0a",
        "v21.0/pro j",
        "v21.0/proj/",  # an empty last segment
        "x" * 5000,
    ],
)
def test_paths_that_could_leave_attask_api_go_nowhere(rest: str) -> None:
    assert upstream_rest(rest) is None


def test_only_descriptive_headers_go_to_workfront() -> None:
    caller = [
        (b"authorization", b"Bearer wtb_secret"),
        (b"cookie", b"a=b"),
        (b"sessionid", b"caller's own"),
        (b"apikey", b"k"),
        (b"x-forwarded-for", b"203.0.113.9"),
        (b"content-type", b"application/json"),
        (b"Accept", b"application/json"),
        (b"accept-language", b"de"),
        (b"content-length", b"12"),
    ]
    sent = to_workfront(caller, {"sessionID": "live"}, streamed_length=False)
    assert sent == {
        "content-type": "application/json",
        "accept": "application/json",
        "accept-language": "de",
        "sessionID": "live",
    }
    streamed = to_workfront(caller, {"sessionID": "live"}, streamed_length=True)
    assert streamed["content-length"] == "12"


def test_hop_by_hop_and_cookies_never_come_back() -> None:
    answer = [
        ("Content-Type", "application/json"),
        ("Retry-After", "3"),
        ("Set-Cookie", "attask=user-cookie"),
        ("Connection", "keep-alive, X-Private"),
        ("X-Private", "hop"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "10"),
        ("Content-Encoding", "gzip"),
        ("Content-Disposition", "attachment; filename=x.csv"),
    ]
    assert to_caller(answer) == [
        (b"content-type", b"application/json"),
        (b"retry-after", b"3"),
        (b"content-disposition", b"attachment; filename=x.csv"),
    ]


@pytest.mark.parametrize(
    ("status", "body", "dead"),
    [
        (401, None, True),
        (401, b"anything", True),
        (200, b'{"error":{"class":"com.attask.common.AuthenticationException"}}', True),
        (200, b'{"error":{"message":"You are not currently logged in."}}', True),
        (500, b'{"error":{"class":"x","message":"You are not currently logged in"}}', True),
        (200, b'{"data":[{"name":"not currently logged in"}]}', False),  # data, not an error
        (200, b'{"error":{"class":"NotFoundException","message":"no PROJ"}}', False),
        (404, b'{"error":"AuthenticationException"}', False),  # no error object
        (200, b"not json, AuthenticationException", False),
        (200, None, False),  # not read (too large, or not JSON)
    ],
)
def test_what_says_the_session_is_dead(status: int, body: bytes | None, dead: bool) -> None:
    assert names_dead_session(status, body) is dead
