"""Several Workfront instances in one broker: two emulators with their own
client ids and secrets, over real HTTP; a user connected on each; each
instance's secret and codes reach only that instance; a callback carrying the
other instance's domain/lane is refused with nothing sent anywhere; refreshes
and proxied calls go to each connection's own instance."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from service.config import Settings
from tests.support import CLIENT_ID
from tests.support.broker import (
    BrokerHarness,
    extract_connection_id,
    login_at_emulator,
    running_broker,
    with_query,
)
from tests.support.emulator import Emulator, refresh_requests, reset_emulator, serve_emulator

PREVIEW_ID = "preview-app"
PREVIEW_SECRET = "preview-secret-" + "p" * 24


@pytest.fixture(scope="module")
def preview_url() -> Iterator[str]:
    with serve_emulator(client_id=PREVIEW_ID, client_secret=PREVIEW_SECRET, lane="preview") as url:
        yield url


@pytest.fixture
async def preview(preview_url: str) -> AsyncIterator[Emulator]:
    async with reset_emulator(preview_url) as emulator:
        yield emulator


@pytest.fixture
async def two(
    clean_db: None,
    emulator: Emulator,
    preview: Emulator,
    settings_for: Callable[..., Settings],
    tmp_path: Path,
) -> AsyncIterator[BrokerHarness]:
    """A broker serving 'default' (the emulator fixture, acme/my) and
    'preview' (the second emulator, acme/preview) from BROKER_INSTANCES_FILE."""
    instances = tmp_path / "instances.toml"
    (tmp_path / "preview.secret").write_text(PREVIEW_SECRET + "\n")
    instances.write_text(
        f"""
[instances.preview]
workfront_url = "{preview.base_url}"
client_id = "{PREVIEW_ID}"
client_secret_file = "preview.secret"
domain = "acme"
lane = "preview"
"""
    )
    settings = settings_for(
        instances_file=str(instances), allowed_return_urls="https://app.example.com/"
    )
    async with running_broker(settings, emulator) as broker:
        yield broker


async def _connect(broker: BrokerHarness, username: str, instance: str) -> uuid.UUID:
    start = await broker.client.get("/oauth/authorize", params={"instance": instance})
    assert start.status_code == 302, start.text
    callback = await login_at_emulator(start.headers["location"], username=username)
    done = await broker.client.get(callback)
    assert done.status_code == 200, done.text
    return extract_connection_id(done.text)


async def _api_calls(emulator: Emulator) -> int:
    answer = await emulator.control.get("/__emulator/api-requests")
    return len(answer.json()["requests"])


def _token_calls(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in log if entry.get("grant_type")]


async def test_a_user_connects_on_each_instance_with_that_instances_app_only(
    two: BrokerHarness, emulator: Emulator, preview: Emulator
) -> None:
    page = await two.client.get("/connect")
    assert page.status_code == 200
    assert 'id="connect-default"' in page.text
    assert 'id="connect-preview"' in page.text
    chooser = await two.client.get("/oauth/authorize")
    assert chooser.status_code == 302
    assert urlsplit(chooser.headers["location"]).path == "/connect"
    one = await two.client.get("/connect", params={"instance": "preview"})
    assert urlsplit(preview.base_url).netloc.split(":")[0] in one.text
    assert (await two.client.get("/connect", params={"instance": "nope"})).status_code == 404

    on_default = await _connect(two, "alice", "default")
    on_preview = await _connect(two, "alice", "preview")
    assert on_default != on_preview  # the same user on two instances: two connections

    key = await two.api_key("tokens:read", "connections:read")
    for connection_id, instance, url in (
        (on_default, "default", emulator.base_url),
        (on_preview, "preview", preview.base_url),
    ):
        token = await two.client.get(f"/v1/connections/{connection_id}/token", headers=key)
        assert token.json()["instance"] == instance
        assert token.json()["workfront_url"] == url
        shown = await two.client.get(f"/v1/connections/{connection_id}", headers=key)
        assert shown.json()["instance"] == instance
        refreshed = await two.client.post(f"/v1/connections/{connection_id}/refresh", headers=key)
        assert refreshed.status_code == 200
    listed = await two.client.get("/v1/connections", params={"instance": "preview"}, headers=key)
    assert [c["id"] for c in listed.json()] == [str(on_preview)]
    instances = await two.client.get("/v1/instances", headers=key)
    assert instances.json() == [
        {"name": "default", "workfront_url": emulator.base_url, "domain": "acme", "lane": "my"},
        {"name": "preview", "workfront_url": preview.base_url, "domain": "acme", "lane": "preview"},
    ]
    assert PREVIEW_SECRET not in instances.text

    # Each emulator saw one code exchange and one refresh, with its own app's credentials.
    for seen, client_id in ((emulator, CLIENT_ID), (preview, PREVIEW_ID)):
        calls = _token_calls(await seen.requests())
        assert [c["grant_type"] for c in calls] == ["authorization_code", "refresh_token"]
        assert all(c["client_ok"] and c["client_id"] == client_id for c in calls)


async def test_a_callback_with_the_other_instances_domain_and_lane_is_refused(
    two: BrokerHarness, emulator: Emulator, preview: Emulator
) -> None:
    start = await two.client.get("/oauth/authorize", params={"instance": "preview"})
    assert start.headers["location"].startswith(preview.base_url)
    callback = await login_at_emulator(start.headers["location"], username="mallory")
    assert parse_qs(urlsplit(callback).query)["lane"] == ["preview"]
    # The browser says it came from the default instance (acme/my) instead.
    forged = with_query(callback, lane="my")
    refused = await two.client.get(forged)
    assert refused.status_code == 400
    assert "wrong_instance" in refused.text
    assert _token_calls(await emulator.requests()) == []
    assert _token_calls(await preview.requests()) == []
    key = await two.api_key("connections:read")
    assert (await two.client.get("/v1/connections", headers=key)).json() == []


async def test_refreshes_and_proxied_calls_go_to_each_connections_instance(
    two: BrokerHarness, emulator: Emulator, preview: Emulator
) -> None:
    users = [f"user-{n}" for n in range(4)]
    default_ids = [await _connect(two, name, "default") for name in users]
    preview_ids = [await _connect(two, name, "preview") for name in users]
    key = await two.api_key("tokens:read")
    mixed = [*default_ids, *preview_ids] * 3
    answers = await asyncio.gather(
        *(two.client.post(f"/v1/connections/{cid}/refresh", headers=key) for cid in mixed)
    )
    assert {a.status_code for a in answers} == {200}
    for seen, client_id in ((emulator, CLIENT_ID), (preview, PREVIEW_ID)):
        refreshes = await refresh_requests(seen)
        assert refreshes, client_id
        assert all(r["client_ok"] and r["client_id"] == client_id for r in refreshes)
        assert await seen.presented_twice() == []
    # The proxy calls the connection's own instance.
    before = len((await preview.control.get("/__emulator/api-requests")).json()["requests"])
    default_before = len(
        (await emulator.control.get("/__emulator/api-requests")).json()["requests"]
    )
    found = await two.client.get(
        f"/v1/connections/{preview_ids[0]}/workfront/attask/api/v21.0/proj/search", headers=key
    )
    assert found.status_code == 200
    assert await _api_calls(preview) == before + 1
    assert await _api_calls(emulator) == default_before


async def test_connect_links_name_their_instance(
    two: BrokerHarness, emulator: Emulator, preview: Emulator
) -> None:
    key = await two.api_key("connections:write")
    body = {"external_ref": "crm-1", "return_url": "https://app.example.com/back"}
    missing = await two.client.post("/v1/connect-sessions", json=body, headers=key)
    assert missing.status_code == 422
    assert missing.json()["type"].endswith("instance-required")
    unknown = await two.client.post(
        "/v1/connect-sessions", json={**body, "instance": "nope"}, headers=key
    )
    assert unknown.status_code == 422
    made = await two.client.post(
        "/v1/connect-sessions", json={**body, "instance": "preview"}, headers=key
    )
    assert made.status_code == 201, made.text
    token = made.json()["url"].rsplit("/", 1)[1]
    start = await two.client.get("/oauth/authorize", params={"session": token})
    assert start.headers["location"].startswith(preview.base_url)
    callback = await login_at_emulator(start.headers["location"], username="linked")
    done = await two.client.get(callback)
    assert done.status_code == 302
    assert parse_qs(urlsplit(done.headers["location"]).query)["status"] == ["connected"]
    assert len(_token_calls(await preview.requests())) == 1
    assert _token_calls(await emulator.requests()) == []


async def test_one_instance_needs_no_instance_named(
    clean_db: None, emulator: Emulator, settings_for: Callable[..., Settings]
) -> None:
    settings = settings_for(allowed_return_urls="https://app.example.com/")
    async with running_broker(settings, emulator) as one:
        key = await one.api_key("connections:write")
        made = await one.client.post(
            "/v1/connect-sessions",
            json={"external_ref": "x", "return_url": "https://app.example.com/back"},
            headers=key,
        )
        assert made.status_code == 201
        start = await one.client.get("/oauth/authorize")
        assert start.status_code == 302
        assert start.headers["location"].startswith(emulator.base_url)


async def _client(
    broker: BrokerHarness, headers: dict[str, str], **spec: Any
) -> tuple[httpx.Response, dict[str, str]]:
    made = await broker.client.post(
        "/v1/clients", json={"name": f"svc-{uuid.uuid4().hex[:6]}", **spec}, headers=headers
    )
    key = made.json().get("api_key", "") if made.status_code == 201 else ""
    return made, {"Authorization": f"Bearer {key}"}


async def _connect_through_link(broker: BrokerHarness, key: dict[str, str], name: str) -> uuid.UUID:
    made = await broker.client.post(
        "/v1/connect-sessions",
        json={
            "external_ref": name,
            "return_url": "https://app.example.com/back",
            "instance": "default",
        },
        headers=key,
    )
    assert made.status_code == 201, made.text
    start = await broker.client.get(
        "/oauth/authorize", params={"session": made.json()["url"].rsplit("/", 1)[1]}
    )
    done = await broker.client.get(
        await login_at_emulator(start.headers["location"], username=name)
    )
    assert done.status_code == 302, done.text
    return uuid.UUID(parse_qs(urlsplit(done.headers["location"]).query)["connection_id"][0])


ALL_SCOPES = ["tokens:read", "connections:read", "connections:write", "workfront:proxy"]


async def test_keys_limited_to_instances_and_their_own_connections(
    two: BrokerHarness, emulator: Emulator, preview: Emulator
) -> None:
    made, own_default = await _client(
        two, two.admin, scopes=ALL_SCOPES, instances=["default"], connections="own"
    )
    assert made.status_code == 201, made.text
    assert made.json()["instances"] == ["default"]
    assert made.json()["connections"] == "own"
    _, any_preview = await _client(two, two.admin, scopes=ALL_SCOPES, instances=["preview"])
    mine = await _connect_through_link(two, own_default, "linked-user")
    theirs = await _connect(two, "page-user", "default")  # the operator page: nobody's own
    elsewhere = await _connect(two, "preview-user", "preview")
    refreshes = len(await refresh_requests(emulator)) + len(await refresh_requests(preview))

    reach = [(own_default, {mine}), (any_preview, {elsewhere})]
    for key, reachable in reach:
        listed = await two.client.get("/v1/connections", headers=key)
        assert {uuid.UUID(c["id"]) for c in listed.json()} == reachable
        for cid in (mine, theirs, elsewhere):
            expected = 200 if cid in reachable else 404
            paths = [
                ("GET", f"/v1/connections/{cid}"),
                ("GET", f"/v1/connections/{cid}/token"),
                ("GET", f"/v1/connections/{cid}/workfront/attask/api/v21.0/proj/search"),
            ]
            for method, path in paths:
                answer = await two.client.request(method, path, headers=key)
                assert answer.status_code == expected, (method, path, answer.text)
            if cid not in reachable:
                # No refresh of what it cannot reach, and no existence oracle.
                forced = await two.client.post(f"/v1/connections/{cid}/refresh", headers=key)
                assert forced.status_code == 404
                assert forced.json()["detail"] == "no such connection"
                gone = await two.client.delete(f"/v1/connections/{cid}", headers=key)
                assert gone.status_code == 404
    assert len(await refresh_requests(emulator)) + len(await refresh_requests(preview)) == (
        refreshes
    )
    every = await two.client.get("/v1/connections", headers=two.admin)
    assert len(every.json()) == 3  # nothing was deleted by a key that could not reach it

    instances = await two.client.get("/v1/instances", headers=own_default)
    assert [i["name"] for i in instances.json()] == ["default"]
    link = {"external_ref": "x", "return_url": "https://app.example.com/back"}
    for key, other in ((own_default, "preview"), (any_preview, "default")):
        refused = await two.client.post(
            "/v1/connect-sessions", json={**link, "instance": other}, headers=key
        )
        assert refused.status_code == 422
    # Within reach, deleting works.
    assert (
        await two.client.delete(f"/v1/connections/{mine}", headers=own_default)
    ).status_code == 204


async def test_a_limited_key_cannot_make_a_wider_one(two: BrokerHarness) -> None:
    made, limited_admin = await _client(two, two.admin, scopes=["admin"], instances=["default"])
    assert made.status_code == 201
    for wider in ({"instances": None}, {"instances": ["preview"]}, {}):
        refused, _ = await _client(two, limited_admin, scopes=["tokens:read"], **wider)
        assert refused.status_code == 403, wider
    narrower, _ = await _client(two, limited_admin, scopes=["tokens:read"], instances=["default"])
    assert narrower.status_code == 201
    unknown, _ = await _client(two, two.admin, scopes=["tokens:read"], instances=["nope"])
    assert unknown.status_code == 422
    made, own_only = await _client(two, two.admin, scopes=["admin"], connections="own")
    refused, _ = await _client(two, own_only, scopes=["tokens:read"])
    assert refused.status_code == 403
    allowed, _ = await _client(two, own_only, scopes=["tokens:read"], connections="own")
    assert allowed.status_code == 201
