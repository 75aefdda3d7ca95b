"""Every absolute URL the broker emits comes from its configured public origin
(BROKER_PUBLIC_URL, else the redirect URI's), never from the request's Host."""

from __future__ import annotations

import re
from collections.abc import Callable

import asyncpg
import pytest

from service.config import Settings
from tests.support.broker import BrokerHarness, running_broker
from tests.support.emulator import Emulator

EVIL = {"Host": "evil.example"}


def _links(html: str) -> list[str]:
    return re.findall(r'(?:href|src)="([^"]+)"', html)


async def test_pages_link_to_the_public_origin_whatever_the_host(broker: BrokerHarness) -> None:
    page = await broker.client.get("/connect", headers=EVIL)
    assert page.status_code == 200
    links = _links(page.text)
    assert links, page.text
    assert all(link.startswith("http://broker.test/") for link in links), links
    assert "evil.example" not in page.text


async def test_the_try_again_link_uses_the_public_origin(
    broker: BrokerHarness, db: asyncpg.Connection
) -> None:
    callback = await broker.authorize("frank")
    await broker.emulator.faults({"kind": "status", "status": 503})
    failed = await broker.client.get(callback, headers=EVIL)
    assert failed.status_code == 502
    assert 'id="retry" href="http://broker.test/connect"' in failed.text
    assert "evil.example" not in failed.text


async def test_public_url_wins_over_the_redirect_uris_origin(
    clean_db: None, emulator: Emulator, settings_for: Callable[..., Settings]
) -> None:
    settings = settings_for(public_url="https://broker.example.com/")
    async with running_broker(settings, emulator) as broker:
        page = await broker.client.get("/connect", headers=EVIL)
        links = _links(page.text)
        assert all(link.startswith("https://broker.example.com/") for link in links), links


@pytest.mark.parametrize("path", ["/connect/", "/v1/connections/", "/healthz/"])
async def test_a_trailing_slash_is_not_redirected_to_the_host(
    broker: BrokerHarness, path: str
) -> None:
    answer = await broker.client.get(path, headers=EVIL)
    assert answer.status_code == 404
    assert "location" not in answer.headers
