"""`serve` refuses bad configuration at start: one line per problem, no secret echoed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import asyncpg
import pytest

from tests.support import REPO
from tests.support.broker import BrokerHarness
from tests.support.config_values import (
    ADMIN_BLANK,
    BAD_KEY_MATERIAL,
    DB_PASSWORD,
    SECRETS,
    assert_no_secret,
    good_values,
)
from tests.support.processes import env_without_broker, run_cli, serve_env


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No BROKER_* variable and no .env: each test sets exactly what it means."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("BROKER_"):
            monkeypatch.delenv(name)
    return monkeypatch


def _serve(tmp_path: Path, values: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = env_without_broker(PYTHONPATH=str(REPO), **values)
    # cwd: no .env there
    return run_cli("serve", "--port", "1", env=env, cwd=tmp_path, timeout=20)


def _config_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("configuration error: ")]


def test_serve_refuses_bad_configuration_with_one_line_per_problem(tmp_path: Path) -> None:
    values = {
        **good_values(),
        "BROKER_DATABASE_URL": f"postgresql://broker:{DB_PASSWORD}@127.0.0.1:1/broker",
        "BROKER_ENCRYPTION_KEYS": f"k1:{BAD_KEY_MATERIAL}",
        "BROKER_ADMIN_API_KEY": ADMIN_BLANK,
    }
    del values["BROKER_CLIENT_ID"]
    del values["BROKER_REDIRECT_URI"]
    result = _serve(tmp_path, values)
    assert result.returncode == 2, result.stderr
    lines = _config_lines(result.stderr)
    named = sorted(line.removeprefix("configuration error: ").partition(":")[0] for line in lines)
    assert named == [
        "BROKER_ADMIN_API_KEY",
        "BROKER_CLIENT_ID",
        "BROKER_ENCRYPTION_KEYS",
        "BROKER_REDIRECT_URI",
    ], result.stderr
    assert_no_secret(result.stderr + result.stdout, *SECRETS)
    assert "Traceback" not in result.stderr


def test_serve_reports_missing_database_url_with_the_other_problems(tmp_path: Path) -> None:
    values = good_values()
    del values["BROKER_CLIENT_ID"]
    result = _serve(tmp_path, values)
    assert result.returncode == 2, result.stderr
    named = sorted(
        line.removeprefix("configuration error: ").partition(":")[0]
        for line in _config_lines(result.stderr)
    )
    assert named == ["BROKER_CLIENT_ID", "BROKER_DATABASE_URL"], result.stderr


async def test_serve_refuses_when_an_instance_with_connections_is_gone(
    broker: BrokerHarness, database_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """Connections made on 'preview' while the configuration now names only
    'default': start-up refuses, naming the instance and its connections."""
    for name in ("alice", "bob"):
        connection_id = await broker.connect(name)
        await db.execute("UPDATE connections SET instance = 'preview' WHERE id = $1", connection_id)
    result = run_cli(
        "serve", "--port", "1", env=serve_env(database_url, broker.settings), cwd=tmp_path,
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = _config_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "instance 'preview' still has 2 connection(s) but is not configured" in lines[0]
    assert_no_secret(result.stderr, *SECRETS)
