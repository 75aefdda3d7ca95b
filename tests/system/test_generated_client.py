"""Internal services generate clients from openapi/openapi.json: one generated
by a real generator (openapi-python-client) reads a token and meets a 404
problem against a running `serve`, with operation names a person would write."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.support import ADMIN_KEY, REPO
from tests.support.broker import BrokerHarness
from tests.support.processes import serve_processes

PACKAGE = "generated_broker_client"


def _generate(into: Path) -> None:
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [
            str(bin_dir / "openapi-python-client"),
            "generate",
            "--path",
            str(REPO / "openapi" / "openapi.json"),
            "--meta",
            "none",
            "--output-path",
            str(into / PACKAGE),
        ],
        check=True,
        cwd=into,
        # Its post-generation hook runs ruff from PATH.
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
        capture_output=True,
        timeout=120,
    )


def _module(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


async def test_a_generated_client_reads_a_token_and_a_problem(
    broker: BrokerHarness, database_url: str, tmp_path: Path
) -> None:
    _generate(tmp_path)
    connection_id = await broker.connect("alice")
    sys.path.insert(0, str(tmp_path))
    try:
        client_module = _module("client")
        get_token = _module("api.connections.connections_get_token")
        problem_model = _module("models.problem").Problem
        async with serve_processes(
            1, database_url=database_url, settings=broker.settings, log_dir=tmp_path
        ) as [url]:
            created = httpx.post(
                f"{url}/v1/clients",
                json={"name": "generated", "scopes": ["tokens:read"]},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            )
            assert created.status_code == 201, created.text
            client = client_module.AuthenticatedClient(
                base_url=url, token=created.json()["api_key"]
            )
            async with client:
                read = await get_token.asyncio_detailed(connection_id=connection_id, client=client)
                assert read.status_code == 200
                assert read.parsed.session_id
                assert read.parsed.connection_id == connection_id
                missing = await get_token.asyncio_detailed(
                    connection_id=uuid.uuid4(), client=client
                )
                assert missing.status_code == 404
                assert isinstance(missing.parsed, problem_model)
                assert missing.parsed.type_.endswith("not-found")
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.split(".")[0] == PACKAGE]:
            del sys.modules[name]
