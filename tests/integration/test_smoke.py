"""The demo path end to end: connect, fetch a sessionID, use it at Workfront."""

from __future__ import annotations

import httpx

from tests.support.broker import BrokerHarness


async def test_connect_fetch_and_use_session(broker: BrokerHarness) -> None:
    connection_id = await broker.connect("alice")
    headers = await broker.api_key("tokens:read")
    response = await broker.client.get(f"/v1/connections/{connection_id}/token", headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "sessionID"
    assert body["connection_id"] == str(connection_id)
    async with httpx.AsyncClient(base_url=broker.emulator.base_url) as wf:
        projects = await wf.get(
            "/attask/api/v21.0/proj/search", headers={"sessionID": body["session_id"]}
        )
    assert projects.status_code == 200
    assert projects.json()["data"]
