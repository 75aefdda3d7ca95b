"""The access log never carries a raw path: a matched route logs its template,
an unmatched path only its first segment (a connect-link token with a trailing
slash, answered by a redirect, used to be logged whole)."""

from __future__ import annotations

import logging
import secrets

import pytest

from tests.support.broker import BrokerHarness


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/connect/{secret}/", "/connect/…"),
        ("/connect/{secret}/more", "/connect/…"),
        ("/v1/connections/{secret}/token/extra", "/v1/…"),
        ("/{secret}", "/…"),
        ("/{secret}/", "/…"),
        ("/static/{secret}.css", "/static/…"),
    ],
)
async def test_unmatched_paths_are_logged_without_their_parts(
    api: BrokerHarness, caplog: pytest.LogCaptureFixture, path: str, logged: str
) -> None:
    secret = secrets.token_urlsafe(32)
    with caplog.at_level(logging.INFO, logger="service.access"):
        answer = await api.client.get(path.format(secret=secret))
    assert answer.status_code in (307, 404)
    records = [r for r in caplog.records if r.name == "service.access"]
    assert [getattr(r, "path", None) for r in records] == [logged]
    assert all(secret not in r.getMessage() for r in records)


async def test_a_matched_route_logs_its_template(
    api: BrokerHarness, caplog: pytest.LogCaptureFixture
) -> None:
    secret = secrets.token_urlsafe(32)
    with caplog.at_level(logging.INFO, logger="service.access"):
        await api.client.get(f"/connect/{secret}")
    records = [r for r in caplog.records if r.name == "service.access"]
    assert [getattr(r, "path", None) for r in records] == ["/connect/{token}"]
