"""/metrics: the operator's view, with closed label sets and no secrets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from service.config import Settings
from tests.support.broker import running_broker
from tests.support.emulator import Emulator


async def test_metrics_cover_refreshes_tokens_and_connections(
    clean_db: None, emulator: Emulator, settings_for: Callable[..., Settings]
) -> None:
    settings = settings_for(refresher_enabled=True, refresher_poll_seconds=0.1)
    async with running_broker(settings, emulator) as broker:
        connection_id = await broker.connect("metered")
        headers = await broker.api_key("tokens:read")
        token = await broker.client.get(f"/v1/connections/{connection_id}/token", headers=headers)
        forced = await broker.client.post(
            f"/v1/connections/{connection_id}/refresh", headers=headers
        )
        await broker.client.get(f"/v1/connections/{connection_id}/token", headers=headers)
        missing = await broker.client.get(
            "/v1/connections/00000000-0000-0000-0000-000000000000/token", headers=headers
        )
        assert missing.status_code == 404
        for _ in range(50):  # let the refresher publish its gauges
            response = await broker.client.get("/metrics")
            if 'broker_connections{status="active"} 1.0' in response.text:
                break
            await asyncio.sleep(0.05)
    text = response.text
    assert response.headers["content-type"].startswith("text/plain")
    for name in (
        "broker_refreshes_total",
        "broker_upstream_seconds_bucket",
        "broker_token_requests_total",
        "broker_connections",
        "broker_soonest_expiry_seconds",
        "broker_refresher_lag_seconds",
    ):
        assert name in text, name
    assert 'broker_refreshes_total{instance="default",outcome="ok"}' in text
    assert 'broker_token_requests_total{kind="token",outcome="ok"}' in text
    assert 'broker_token_requests_total{kind="token",outcome="not-found"}' in text
    assert 'broker_connections{status="active"} 1.0' in text
    for secret in (
        token.json()["session_id"],
        forced.json()["session_id"],
        str(connection_id),
        headers["Authorization"].removeprefix("Bearer "),
    ):
        assert secret not in text
