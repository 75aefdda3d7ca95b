"""HEAD is answered wherever GET is: the GET's status and headers, no body
(the contract's operations section; a 405 naming HEAD in Allow was a lie)."""

from __future__ import annotations

import pytest

from tests.support.broker import BrokerHarness


async def _head_matches_get(api: BrokerHarness, path: str, headers: dict[str, str]) -> None:
    got = await api.client.get(path, headers=headers)
    head = await api.client.head(path, headers=headers)
    assert head.status_code == got.status_code, path
    assert head.content == b""
    assert head.headers.get("content-type") == got.headers.get("content-type")
    if path != "/metrics":  # its body changes with every request (and background round)
        assert head.headers.get("content-length") == got.headers.get("content-length")
    else:
        assert int(head.headers["content-length"]) > 0


@pytest.mark.parametrize(
    ("path", "keyed"),
    [
        ("/healthz", False),
        ("/readyz", False),
        ("/metrics", False),
        ("/connect", False),
        ("/static/broker.css", False),
        ("/v1/connections", True),
        ("/v1/clients", True),
        ("/v1/connections", False),  # the 401 problem, as for GET
    ],
)
async def test_head_answers_like_get_without_a_body(
    api: BrokerHarness, path: str, keyed: bool
) -> None:
    await _head_matches_get(api, path, api.admin if keyed else {})


async def test_head_of_a_token_answers_like_its_get(broker: BrokerHarness) -> None:
    connection_id = await broker.connect("alice")
    headers = await broker.api_key("tokens:read")
    path = f"/v1/connections/{connection_id}/token"
    # The second GET is answered by the fast path (key and session in memory).
    for _ in range(2):
        head = await broker.client.head(path, headers=headers)
        assert head.status_code == 200
        assert head.content == b""
        assert int(head.headers["content-length"]) > 0


async def test_head_where_only_post_is_served_is_405_naming_post(api: BrokerHarness) -> None:
    head = await api.client.head("/v1/connect-sessions", headers=api.admin)
    assert head.status_code == 405
    assert head.headers["allow"] == "POST"
    assert head.content == b""
