"""The commands of the contract, run as a user runs them."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest
from sqlalchemy import make_url

from service.config import Settings
from tests.support.broker import make_settings, running_broker
from tests.support.db import asyncpg_dsn
from tests.support.emulator import Emulator
from tests.support.processes import env_without_broker, free_port, run_cli


def test_migrate_is_idempotent(database_url: str) -> None:
    result = run_cli("migrate", env=env_without_broker(BROKER_DATABASE_URL=database_url))
    assert result.returncode == 0, result.stderr
    assert "newest revision" in result.stdout


def test_migrate_without_database_url_says_so(tmp_path: Path) -> None:
    result = run_cli("migrate", env=env_without_broker(), cwd=tmp_path)
    assert result.returncode == 2
    assert "configuration error: BROKER_DATABASE_URL: required but not set" in result.stderr


@pytest.mark.parametrize(
    "command",
    [["migrate"], ["clients", "create", "--name", "ops", "--scope", "tokens:read"]],
    ids=["migrate", "clients-create"],
)
def test_an_unreachable_database_is_one_line_without_the_url(
    tmp_path: Path, command: list[str]
) -> None:
    unreachable = "postgresql://broker:pw-SENTINEL-db@127.0.0.1:1/broker"
    result = run_cli(
        *command, env=env_without_broker(BROKER_DATABASE_URL=unreachable), cwd=tmp_path
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: cannot reach the database of BROKER_DATABASE_URL (ConnectionRefusedError)"
    ]
    assert "pw-SENTINEL-db" not in result.stdout + result.stderr


def test_keys_rotate_names_every_missing_variable_at_once(tmp_path: Path) -> None:
    result = run_cli("keys", "rotate", env=env_without_broker(), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    named = [
        line.removeprefix("configuration error: ").partition(":")[0]
        for line in result.stderr.splitlines()
    ]
    assert "BROKER_DATABASE_URL" in named
    assert "BROKER_ENCRYPTION_KEYS" in named


async def test_clients_create_prints_a_working_key(
    clean_db: None,
    database_url: str,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
) -> None:
    result = run_cli(
        "clients", "create", "--name", "cli-made", "--scope", "connections:read",
        env=env_without_broker(BROKER_DATABASE_URL=database_url),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    key = re.search(r"wtb_[A-Za-z0-9_-]{43}", result.stdout)
    assert key is not None, result.stdout
    async with running_broker(settings_for(), emulator) as broker:
        headers = {"Authorization": f"Bearer {key.group(0)}"}
        assert (await broker.client.get("/v1/connections", headers=headers)).status_code == 200
        assert (await broker.client.get("/v1/clients", headers=headers)).status_code == 403


def test_clients_create_refuses_an_unknown_scope(database_url: str) -> None:
    result = run_cli(
        "clients", "create", "--name", "x", "--scope", "everything",
        env=env_without_broker(BROKER_DATABASE_URL=database_url),
    )  # fmt: skip
    assert result.returncode == 2
    assert "--scopes" in result.stderr


async def test_readyz_says_when_the_schema_is_behind(
    db: asyncpg.Connection,
    clean_db: None,
    emulator: Emulator,
    settings_for: Callable[..., Settings],
) -> None:
    async with running_broker(settings_for(), emulator) as broker:
        assert (await broker.client.get("/readyz")).status_code == 200
        head = await db.fetchval("SELECT version_num FROM alembic_version")
        await db.execute("UPDATE alembic_version SET version_num = 'older'")
        try:
            response = await broker.client.get("/readyz")
            assert response.status_code == 503
            assert response.json()["reason"] == "schema behind"
        finally:
            await db.execute("UPDATE alembic_version SET version_num = $1", head)
        assert (await broker.client.get("/healthz")).status_code == 200


async def test_an_unmigrated_database_answers_503_not_500(
    pg_server_url: str, emulator: Emulator, encryption_keys: str
) -> None:
    """`serve` before `migrate`: the API and the pages say "not ready", as
    /readyz does, instead of an internal error."""
    name = f"broker_unmigrated_{uuid.uuid4().hex[:8]}"
    _, admin_kwargs = asyncpg_dsn(pg_server_url)
    admin = await asyncpg.connect(**admin_kwargs)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
        settings = make_settings(url, emulator.base_url, encryption_keys)
        async with running_broker(settings, emulator) as broker:
            api = await broker.client.get("/v1/connections", headers=broker.admin)
            assert api.status_code == 503, api.text
            assert api.json()["type"].endswith("schema-missing")
            # A page that reads the database (starting a sign-in does not).
            page = await broker.client.get("/connect/" + "x" * 43)
            assert page.status_code == 503
            assert page.headers["content-type"].startswith("text/html")
            assert (await broker.client.get("/readyz")).status_code == 503
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _wait_for_key(process: subprocess.Popen[str], log: Path) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"demo API key \(admin, shown once\): (wtb_\S+)", log.read_text())
        if found:
            return found.group(1)
        assert process.poll() is None, log.read_text()
        await asyncio.sleep(0.1)
    raise AssertionError(log.read_text())


async def _wait_ready(broker_url: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(base_url=broker_url) as probe:
        while True:
            try:
                if (await probe.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{broker_url} did not become ready"
            await asyncio.sleep(0.1)


async def _connect_in_demo(broker_url: str, instance: str) -> None:
    await _wait_ready(broker_url)
    async with httpx.AsyncClient(base_url=broker_url) as browser:
        start = await browser.get("/oauth/authorize", params={"instance": instance})
        location = urlsplit(start.headers["location"])
        params = {k: v[0] for k, v in parse_qs(location.query).items()}
        async with httpx.AsyncClient() as wf:
            answer = await wf.post(
                f"{location.scheme}://{location.netloc}{location.path}",
                data={**params, "username": "demo", "password": "pw", "decision": "allow"},
            )
        callback = urlsplit(answer.headers["location"])
        done = await browser.get(f"{callback.path}?{callback.query}")
        assert done.status_code == 200, done.text


async def test_dev_runs_the_whole_demo_and_keeps_its_data(tmp_path: Path) -> None:
    port, emulator_port, preview_port = free_port(), free_port(), free_port()
    broker_url = f"http://127.0.0.1:{port}"
    args = ["dev", "--port", str(port), "--emulator-port", str(emulator_port)]
    args += ["--preview-port", str(preview_port)]
    env = env_without_broker()
    session_ids = []
    for round_ in range(2):
        log = tmp_path / f"dev-{round_}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "service", *args],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        try:
            key = await _wait_for_key(process, log)
            headers = {"Authorization": f"Bearer {key}"}
            await _wait_ready(broker_url)
            if round_ == 0:
                # The demo's two instances: one user connected on each.
                await _connect_in_demo(broker_url, "default")
                await _connect_in_demo(broker_url, "preview")
            async with httpx.AsyncClient(base_url=broker_url, headers=headers) as api:
                listed = await api.get("/v1/connections")
                assert listed.status_code == 200
                assert sorted(c["instance"] for c in listed.json()) == ["default", "preview"]
                for connection in listed.json():
                    token = await api.get(f"/v1/connections/{connection['id']}/token")
                    assert token.status_code == 200, token.text
                    session_ids.append(token.json()["session_id"])
        finally:
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=30) == 0, log.read_text()
    # Restarted on the same data: the stored session is still readable.
    assert session_ids[:2] == session_ids[2:]
    assert (tmp_path / ".dev-data" / "encryption-key").exists()
