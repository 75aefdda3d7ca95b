"""API fuzzing: schemathesis against a running `serve` process's own OpenAPI schema.

Every check schemathesis has (no 5xx, responses match the schema, status codes
and headers documented, schema-valid input accepted, invalid input rejected,
authentication never ignored), once with the admin key and once with no key,
with a bounded number of examples and a fixed seed so a failure reproduces.
`tests/system/fuzz/schemathesis.toml` lists the documented exceptions.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ADMIN_KEY, REPO
from tests.support.broker import BrokerHarness
from tests.support.processes import one_serve

CONFIG = REPO / "tests" / "system" / "fuzz" / "schemathesis.toml"
EXAMPLES = os.environ.get("FUZZ_EXAMPLES", "25")
SEED = os.environ.get("FUZZ_SEED", "20261127")


def _schemathesis(
    url: str, connection_id: str, workdir: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file",
            str(CONFIG),
            "--no-color",
            "run",
            f"{url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            EXAMPLES,
            "--seed",
            SEED,
            "--workers",
            "1",
            "--generation-database",
            "none",  # nothing carried over between runs: the seed decides
            "--request-timeout",
            "30",
            *extra,
        ],
        env={**os.environ, "FUZZ_CONNECTION_ID": connection_id},
        cwd=workdir,  # where it keeps its cache (.schemathesis/): not the checkout
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.parametrize("with_key", [True, False], ids=["admin-key", "no-key"])
async def test_schemathesis_finds_nothing(
    broker: BrokerHarness, database_url: str, tmp_path: Path, with_key: bool
) -> None:
    connection_id = str(await broker.connect("alice"))
    async with one_serve(
        broker.settings,
        database_url,
        tmp_path / "serve.log",
        BROKER_ALLOWED_RETURN_URLS="https://app.example.com/",
        BROKER_STATUS_PAGE_ENABLED="true",
        BROKER_LOG_FORMAT="text",
    ) as (_, url):
        headers = ["--header", f"Authorization: Bearer {ADMIN_KEY}"] if with_key else []
        result = await asyncio.to_thread(_schemathesis, url, connection_id, tmp_path, *headers)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    # The run really exercised the API: every operation, and every case passed.
    total = re.search(r"Operations:\s+(\d+) selected / (\d+) total", report)
    tested = re.search(r"Tested: (\d+)", report)
    cases = re.search(r"(\d+) generated, (\d+) passed", report)
    assert total is not None, report
    assert tested is not None, report
    assert cases is not None, report
    assert total[1] == total[2] == tested[1], report
    assert int(total[2]) >= 15, report
    assert cases[1] == cases[2], report
    assert int(cases[1]) >= 300, report
    server_log = (tmp_path / "serve.log").read_text()
    assert " 500 " not in server_log, server_log[-3000:]
